"""What every engine config is made of: the field helper (help on every field), the error that names the
field to change, and the model section every config shares.

Stdlib only (the Django web tier imports the configs). `config.py` holds the configs of the subcommands
and the loader; `rl_config.py` the policy-optimisation ones; both build on this module, so neither
imports the other's internals.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A run config that cannot work; the message names the field and what to change."""


def option(default, help: str, **meta):
    """A config field with its help text (``describe`` and the forms show it); ``meta`` carries more of what
    a form needs to know (label, bounds, choices), read by ``rlhf.engine.round``."""
    metadata = {"help": help, **meta}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: dataclasses.replace(d), metadata=metadata)
    return field(default=default, metadata=metadata)


def data_dir() -> Path:
    """Root for caches and built models: `$LENSLOOP_DATA_DIR`, default `var/data` under the cwd."""
    return Path(os.environ.get("LENSLOOP_DATA_DIR", "var/data"))


def check(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless cond holds."""
    if not cond:
        raise ConfigError(msg)


# The PEFT methods the engine trains, each with the line a form shows for it (the round's `peft_method` choices).
PEFT_METHOD_CHOICES = {
    "lora": "LoRA (Hu et al. 2021; default)",
    "dora": "DoRA: LoRA with a learnt magnitude (Liu et al. 2024)",
    "ia3": "IA3: learnt scaling vectors, the fewest weights (Liu et al. 2022)",
    "loha": "LoHa: Hadamard product of low-rank pairs (LyCORIS; not with QLoRA)",
    "lokr": "LoKr: Kronecker product (LyCORIS; not with QLoRA)",
    "adalora": "AdaLoRA: LoRA whose rank moves to the matrices that matter (Zhang et al. 2023)",
    "bottleneck_adapter": "Bottleneck adapters after attention and MLP (Houlsby et al. 2019)",
    "prompt_tuning": "Prompt tuning: trainable virtual tokens before the input, nothing else (Lester et al. 2021)",
}
BOTTLENECK_PLACEMENTS = ("attention", "mlp", "both")

# The model types prompt tuning works on (tests/engine/test_families.py checks that their sampled answers are those
# the training pass scores); the others are refused when a round starts or a model loads, with the reason where
# it is known (docs/engine.md, "Prompt tuning").
PROMPT_TUNING_FAMILIES = ("llava", "llava_next", "llava_onevision", "idefics3", "smolvlm")
_NO_PROMPT_TUNING = {
    "qwen2_vl": "it computes its 3-D rotary positions (M-RoPE) from the input ids, which the virtual tokens are not "
                "among",
    "paligemma": "its attention over the image and prompt is bidirectional by token_type_ids, which PEFT's prompt "
                 "tuning drops (the answers it samples would not be those its training pass scores)",
    "gemma3": "its attention over the image is bidirectional by token_type_ids, which PEFT's prompt tuning drops (the "
              "answers it samples would not be those its training pass scores)",
}
_NO_PROMPT_TUNING["qwen2_5_vl"] = _NO_PROMPT_TUNING["qwen3_vl"] = _NO_PROMPT_TUNING["qwen2_vl"]


def prompt_tuning_refusal(model_type: str | None) -> str | None:
    """Why prompt tuning cannot train a model of `model_type` and what to use instead; None where it can."""
    if model_type in PROMPT_TUNING_FAMILIES:
        return None
    why = _NO_PROMPT_TUNING.get(model_type, "prompt tuning is not tested on it")
    return (f"model.peft_method='prompt_tuning' cannot train a {model_type!r} model: {why}. It works on "
            f"{', '.join(PROMPT_TUNING_FAMILIES)}; use 'lora' (or 'ia3' for the fewest trainable weights)")


# Methods whose PEFT layers have no bitsandbytes 4-bit version (PEFT 0.21 wraps the packed 4-bit weight as a
# plain Linear and the first forward pass fails on its shape).
_PEFT_NO_4BIT = ("loha", "lokr")
PEFT_METHODS = tuple(PEFT_METHOD_CHOICES)


@dataclass
class ModelConfig:
    """Which VLM to load and how to adapt it."""

    path: str = option("demo", "Local folder (or hub id) of a model that AutoModelForImageTextToText and "
                       "AutoProcessor load; 'demo' means the tiny demo model built by `build-demo` (default build).")
    adapter_path: str | None = option(None, "Optional folder of a saved adapter to load on top of `path` "
                                      "(e.g. the policy of a previous round); its adapter_config.json says which "
                                      "PEFT method it is, whatever `peft_method` says.")
    device: str = option("auto", "'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    dtype: str = option("auto", "'auto' (bfloat16 on CUDA with bf16 support, float32 otherwise), 'float32', "
                        "'bfloat16' or 'float16'.")
    lora: bool = option(True, "Train LoRA adapters (Hu et al. 2021) instead of all weights.")
    peft_method: str = option("lora", "Which PEFT adapter `lora: true` trains: 'lora' (Hu et al. 2021), 'dora' "
                              "(LoRA with a learnt magnitude, Liu et al. 2024), 'ia3' (learnt scaling vectors, Liu "
                              "et al. 2022), 'loha' or 'lokr' (Hadamard / Kronecker products, LyCORIS), 'adalora' "
                              "(Zhang et al. 2023: ranks start at 1.5 × lora_r and are pruned to lora_r on average "
                              "over the run), on the same `lora_target_modules`; 'bottleneck_adapter' (Houlsby et al. 2019: a small down-project "
                              "→ GELU → up-project block with a residual after attention and/or the MLP of each "
                              "language-model layer, see `bottleneck_*`); 'prompt_tuning' (Lester et al. 2021: "
                              "`prompt_tuning_tokens` trainable embeddings before every input, started from words "
                              "of the vocabulary).")
    lora_r: int = option(8, "LoRA rank r.")
    lora_alpha: int = option(16, "LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = option(0.0, "Dropout on the LoRA input.")
    bottleneck_reduction_factor: int = option(16, "peft_method 'bottleneck_adapter': each adapter's bottleneck has "
                                              "(the module's output width) / this many units, at least 1.")
    bottleneck_placement: str = option("both", "peft_method 'bottleneck_adapter': after 'attention' (o_proj), the "
                                       "'mlp' (down_proj) or 'both' (Houlsby et al. 2019) of each language-model "
                                       "layer; `lora_target_modules` is not read.")
    prompt_tuning_tokens: int = option(8, "peft_method 'prompt_tuning': how many virtual tokens are prepended "
                                       "(each a trainable embedding of the language model's width).")
    lora_target_modules: list[str] = option(["q_proj", "v_proj"], "Module names (last component) that get LoRA.")
    lora_language_model_only: bool = option(True, "Restrict LoRA targets to the language model: a bare "
                                            "['q_proj','v_proj'] also matches the vision tower's attention.")
    lora_modules_to_save: list[str] = option([], "Modules trained in full beside the LoRA adapter and saved with it "
                                             "(PEFT `modules_to_save`; a module matches when its name ends with the "
                                             "entry). 'language_model.norm', the language model's final RMSNorm, "
                                             "lets the policy rescale its logits: see docs/policy.md.")
    qlora: bool = option(False, "Load the base weights in 4-bit NF4 through bitsandbytes (Dettmers et al. 2023) "
                         "and train LoRA on top; needs `lora: true`.")
    qlora_skip_modules: list[str] = option(
        ["lm_head", "multi_modal_projector", "vision_tower", "visual", "vision_model", "connector"],
        "Modules left unquantised under QLoRA (projector, vision tower, output head).")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass to save memory.")
    check_processor: bool = option(True, "After loading, run one tiny forward pass to check that the processor "
                                   "and the model agree (image token count, image size); fails with a hint.")

    def validate(self) -> None:
        check(bool(self.path), "model.path is empty: give a model folder, a hub id or 'demo'")
        check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
              f"model.device={self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        check(self.dtype in ("auto", "float32", "bfloat16", "float16"),
              f"model.dtype={self.dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'")
        check(self.lora_r >= 1, f"model.lora_r={self.lora_r}: the LoRA rank must be at least 1")
        check(self.lora_alpha > 0, "model.lora_alpha must be positive")
        check(0.0 <= self.lora_dropout < 1.0, "model.lora_dropout must lie in [0, 1)")
        check(bool(self.lora_target_modules), "model.lora_target_modules is empty: name at least one module")
        check(not self.qlora or self.lora, "model.qlora=true needs model.lora=true (4-bit weights are frozen)")
        check(self.bottleneck_reduction_factor >= 1,
              f"model.bottleneck_reduction_factor={self.bottleneck_reduction_factor}: must be at least 1")
        check(self.bottleneck_placement in BOTTLENECK_PLACEMENTS, f"model.bottleneck_placement="
              f"{self.bottleneck_placement!r}: one of {', '.join(BOTTLENECK_PLACEMENTS)}")
        check(self.peft_method in PEFT_METHODS,
              f"model.peft_method={self.peft_method!r}: unknown method; one of {', '.join(PEFT_METHODS)}")
        check(self.prompt_tuning_tokens >= 1,
              f"model.prompt_tuning_tokens={self.prompt_tuning_tokens}: at least one virtual token")
        check(not (self.peft_method == "prompt_tuning" and self.lora_modules_to_save),
              "model.lora_modules_to_save is not read by peft_method='prompt_tuning' (PEFT saves only the "
              "virtual tokens): leave it empty, or use 'lora'")
        check(self.lora or self.peft_method == "lora",
              f"model.peft_method={self.peft_method!r} needs model.lora=true (lora=false trains every weight, "
              "with no adapter)")
        check(not (self.qlora and self.peft_method in _PEFT_NO_4BIT),
              f"model.peft_method={self.peft_method!r} cannot train on 4-bit weights (PEFT has no bitsandbytes "
              f"layer for it): set qlora=false, or use 'lora', 'dora', 'ia3' or 'bottleneck_adapter' with qlora")
