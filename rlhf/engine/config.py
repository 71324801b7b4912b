"""Run configurations of the training engine: one dataclass per CLI subcommand, help on every field.

Importable from the Django web tier: stdlib only, no torch, no transformers. `load_config(kind, data)`
builds and validates a config from a dict or a JSON file; `validate()` raises `ConfigError` (a
`ValueError`) whose message says which field to change and how, before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A run config that cannot work; the message names the field and what to change."""


def _f(default, help: str, **kw):
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: dataclasses.replace(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def data_dir() -> Path:
    """Root for caches and built models: `$LENSLOOP_DATA_DIR`, default `var/data` under the cwd."""
    return Path(os.environ.get("LENSLOOP_DATA_DIR", "var/data"))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class ModelConfig:
    """Which VLM to load and how to adapt it."""

    path: str = _f("demo", "Local folder (or hub id) of a model that AutoModelForImageTextToText and "
                   "AutoProcessor load; 'demo' means the tiny demo model built by `build-demo` (default build).")
    adapter_path: str | None = _f(None, "Optional folder of a saved LoRA adapter to load on top of `path` "
                                  "(e.g. the policy of a previous round).")
    device: str = _f("auto", "'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    dtype: str = _f("auto", "'auto' (bfloat16 on CUDA with bf16 support, float32 otherwise), 'float32', "
                    "'bfloat16' or 'float16'.")
    lora: bool = _f(True, "Train LoRA adapters (Hu et al. 2021) instead of all weights.")
    lora_r: int = _f(8, "LoRA rank r.")
    lora_alpha: int = _f(16, "LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input.")
    lora_target_modules: list[str] = _f(["q_proj", "v_proj"], "Module names (last component) that get LoRA.")
    lora_language_model_only: bool = _f(True, "Restrict LoRA targets to the language model: a bare "
                                        "['q_proj','v_proj'] also matches the vision tower's attention.")
    lora_modules_to_save: list[str] = _f([], "Modules trained in full beside the LoRA adapter and saved with it "
                                         "(PEFT `modules_to_save`; a module matches when its name ends with the "
                                         "entry). 'language_model.norm', the language model's final RMSNorm, "
                                         "lets the policy rescale its logits: see docs/policy.md.")
    qlora: bool = _f(False, "Load the base weights in 4-bit NF4 through bitsandbytes (Dettmers et al. 2023) "
                     "and train LoRA on top; needs `lora: true`.")
    qlora_skip_modules: list[str] = _f(
        ["lm_head", "multi_modal_projector", "vision_tower", "visual", "vision_model", "connector"],
        "Modules left unquantised under QLoRA (projector, vision tower, output head).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    check_processor: bool = _f(True, "After loading, run one tiny forward pass to check that the processor "
                               "and the model agree (image token count, image size); fails with a hint.")

    def validate(self) -> None:
        _check(bool(self.path), "model.path is empty: give a model folder, a hub id or 'demo'")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               f"model.device={self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"),
               f"model.dtype={self.dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'")
        _check(self.lora_r >= 1, f"model.lora_r={self.lora_r}: the LoRA rank must be at least 1")
        _check(self.lora_alpha > 0, "model.lora_alpha must be positive")
        _check(0.0 <= self.lora_dropout < 1.0, "model.lora_dropout must lie in [0, 1)")
        _check(bool(self.lora_target_modules), "model.lora_target_modules is empty: name at least one module")
        _check(not self.qlora or self.lora, "model.qlora=true needs model.lora=true (4-bit weights are frozen)")


def world_words() -> list[str]:
    """The demo world's attribute words (colours, shapes, sizes), which `label_noise` may swap."""
    from .demo import world

    return [*world.COLORS, *world.SHAPES, *world.SIZES]


@dataclass
class BuildDemoConfig:
    """Build the tiny offline demo VLM: tokenizer, LLaVA-style model from configs, supervised on the
    shapes world. Deterministic for a given config; cached under `<data dir>/models/demo-<hash>`. The defaults
    are the demo base shipped in rlhf/engine/demo/base (a model that sees its world well and was taught to
    say some of it wrong); `rlhf.engine.demo.TINY_BUILD` is the quick one the tests use."""

    seed: int = _f(0, "Seed for scenes, initialisation and batch order.")
    image_size: int = _f(128, "Model input resolution (pixels); scenes are drawn at 128 and resized to it.")
    patch_size: int = _f(16, "Vision transformer patch size; (image_size / patch_size)^2 image tokens.")
    vision_hidden: int = _f(128, "Vision tower width.")
    vision_layers: int = _f(2, "Vision tower depth.")
    text_hidden: int = _f(128, "Language model width.")
    text_layers: int = _f(2, "Language model depth.")
    heads: int = _f(4, "Attention heads in both towers.")
    steps: int = _f(8000, "Supervised training steps (the main knob for quality vs build time).")
    batch_size: int = _f(32, "Examples per step (one image + one prompt + its answer each).")
    lr: float = _f(2e-3, "Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = _f(200, "Linear warm-up steps.")
    vqa_fraction: float = _f(0.35, "Fraction of training examples that are VQA questions (rest: captions).")
    train_images: int = _f(20000, "Distinct training scenes (drawn once, reused across steps).")
    eval_images: int = _f(300, "Held-out scenes for the report in result.json / build.json.")
    budget_seconds: float = _f(0.0, "Wall-clock cap on training (0 = none). When it bites, the model depends on the "
                               "machine's speed: the build stops early, build.json records the steps reached and "
                               "build-demo's result says `budget_reached`. `steps` is the deterministic knob.")
    threads: int = _f(0, "torch CPU threads (0 = leave torch's default).")
    label_noise: list[list] = _f([["purple", "blue", 0.8], ["yellow", "green", 0.8]],
                                 "Systematic errors in the training captions and answers, as [true word, word written instead, probability] triples, e.g. "
                                 "[['purple', 'blue', 0.7]]: a starting policy that can see but was taught "
                                 "to say the wrong thing, as a base model trained on sloppy web captions is. "
                                 "[] for clean labels. The default is the demo base's.")
    omit_objects: float = _f(0.3, "Probability that a training caption of a scene with two or more shapes leaves "
                             "one of them out (and counts one fewer): a base that sees every shape but was "
                             "taught to omit some, the omission error of VLMs.")
    extra_objects: float = _f(0.15, "Probability that a training caption of a scene with fewer than three shapes "
                              "describes one more that is not there (and counts it): the hallucination error "
                              "of VLMs.")

    def validate(self) -> None:
        vocab = set(world_words())
        for entry in self.label_noise:
            _check(isinstance(entry, (list, tuple)) and len(entry) == 3,
                   f"label_noise entry {entry!r}: give [true word, word written instead, probability]")
            true, said, p = entry
            _check(true in vocab and said in vocab and true != said,
                   f"label_noise entry {entry!r}: both words must be distinct colours, shapes or sizes of the demo "
                   f"world ({', '.join(sorted(vocab))})")
            _check(isinstance(p, (int, float)) and 0.0 <= p <= 1.0,
                   f"label_noise entry {entry!r}: the probability must lie in [0, 1]")
        _check(len({e[0] for e in self.label_noise}) == len(self.label_noise),
               "label_noise names a true word twice")
        _check(0.0 <= self.omit_objects <= 1.0 and 0.0 <= self.extra_objects <= 1.0,
               "omit_objects and extra_objects are probabilities: they must lie in [0, 1]")
        _check(self.omit_objects + self.extra_objects <= 1.0,
               "omit_objects + extra_objects must be at most 1 (a caption gets at most one of the two errors)")
        _check(self.image_size % self.patch_size == 0,
               f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        _check(self.vision_hidden % self.heads == 0 and self.text_hidden % self.heads == 0,
               "vision_hidden and text_hidden must be multiples of heads")
        _check(self.steps >= 1, "steps must be at least 1")
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(0.0 <= self.vqa_fraction <= 1.0, "vqa_fraction must lie in [0, 1]")
        _check(self.train_images >= self.batch_size, "train_images must be at least batch_size")
        _check(self.eval_images >= 1, "eval_images must be at least 1")
        _check(self.budget_seconds >= 0, "budget_seconds must be >= 0 (0 = no cap)")


@dataclass
class SFTConfig:
    """Supervised fine-tuning of a policy on a prompt set with references (answer-only loss)."""

    model: ModelConfig = _f(ModelConfig(), "The policy to fine-tune.")
    train_file: str = _f("", "Prompt-set JSONL with a `reference` per line; images relative to its folder. Lines "
                         "marked \"split\": \"eval\" are held out: never trained on.")
    steps: int = _f(100, "Optimiser steps.")
    batch_size: int = _f(16, "Global examples per step (divided across processes).")
    lr: float = _f(2e-4, "Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = _f(10, "Linear warm-up steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    seed: int = _f(0, "Seed for batch order and initialisation.")
    log_every: int = _f(10, "Log metrics every N steps.")

    def validate(self) -> None:
        self.model.validate()
        _check(bool(self.train_file), "train_file is empty: give a prompt-set JSONL with references")
        _check(self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be at least 1")
        _check(self.lr > 0, "lr must be positive")


@dataclass
class GenerateConfig:
    """Sample K distinct candidates per prompt; writes the Samples JSONL."""

    model: ModelConfig = _f(ModelConfig(), "The policy that samples.")
    prompts_file: str = _f("", "Prompt-set JSONL (`prompt_id`, `images`, `prompt`); images relative to its folder.")
    output_file: str = _f("", "Samples JSONL to write; default `<run dir>/samples.jsonl`.")
    model_version: str = _f("", "Written into every sample's `model_version` (default: model.path).")
    k: int = _f(4, "Distinct candidates per prompt.")
    temperature: float = _f(1.0, "Sampling temperature.")
    top_p: float = _f(1.0, "Nucleus sampling threshold (1 = off).")
    max_new_tokens: int = _f(32, "Longest candidate in tokens.")
    batch_size: int = _f(8, "Prompts per generate call (each expands to K sequences).")
    max_resample_rounds: int = _f(8, "Rounds of fresh samples to replace duplicate or empty candidates; each "
                                  "round raises the temperature by `resample_temperature_step`.")
    resample_temperature_step: float = _f(0.25, "Temperature added per resampling round.")
    seed: int = _f(0, "Sampling seed.")
    reward_model_path: str = _f("", "Optional reward-model checkpoint: every sample line then carries "
                                "`reward` (its score), for uncertainty-first task priorities.")

    def validate(self) -> None:
        self.model.validate()
        _check(bool(self.prompts_file), "prompts_file is empty: give a prompt-set JSONL")
        _check(self.k >= 1, "k must be at least 1")
        _check(self.temperature > 0, "temperature must be positive (use a small value for near-greedy)")
        _check(0 < self.top_p <= 1, "top_p must lie in (0, 1]")
        _check(self.max_new_tokens >= 1 and self.batch_size >= 1, "max_new_tokens and batch_size must be >= 1")
        _check(self.max_resample_rounds >= 0, "max_resample_rounds must be >= 0")


@dataclass
class RewardConfig:
    """Train the multimodal reward model (scalar head on the VLM) with the Bradley–Terry loss."""

    model: ModelConfig = _f(ModelConfig(), "Backbone of the reward model.")
    train_file: str = _f("", "Preference-records JSONL (export format); images relative to its folder.")
    eval_file: str = _f("", "Held-out preference records (eval/… figures); empty = the train_file lines marked "
                        "split=eval (never trained on), else `eval_fraction` split off train_file by ranking_id, "
                        "whose figures are named train_split/… (not held out: they rank training prompts).")
    eval_fraction: float = _f(0.2, "Fraction split off by ranking_id when there is no held-out data.")
    epochs: float = _f(2.0, "Passes over the training pairs (fractional allowed).")
    max_steps: int = _f(0, "Stop after this many optimiser steps (0 = use epochs).")
    batch_size: int = _f(16, "Global pairs per step; must divide by the number of processes.")
    lr: float = _f(3e-4, "Peak AdamW learning rate for the adapter (or backbone).")
    head_lr: float = _f(3e-3, "Peak learning rate of the new scalar head (and the likelihood weight α); "
                        "0 = same as lr. The head starts from scratch and needs a larger step than the backbone.")
    likelihood_term: bool = _f(True, "Add α·log p(answer | image, prompt) under the backbone's own LM head, α "
                               "learnt from 0 (so the untrained reward is still at chance): the head can use what "
                               "the captioner knows word by word. Needs a model with an LM head.")
    token_head: str = _f("mean", "'' (off), 'mean' or 'sum': add a second linear head pooled over the answer's tokens "
                         "(starts at 0), a per-token score, so that one wrong word or one object too many or too few "
                         "is judged where it is said. 'mean' gives a longer answer nothing for its length alone "
                         "(docs/engine.md, the reward model).")
    warmup_steps: int = _f(10, "Linear warm-up steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    margin_weight: float = _f(0.0, "Scale of the rank-distance margin m in -log σ(r_c - r_r - m·(margin-1)) "
                              "(Touvron et al. 2023, Llama 2 §3.2.2); 0 = plain Bradley–Terry.")
    center_weight: float = _f(0.01, "Weight of the (r_c + r_r)^2 penalty that keeps rewards centred "
                              "(Eisenstein et al. 2023); 0 = off.")
    seed: int = _f(0, "Seed for head initialisation, split and batch order.")
    log_every: int = _f(5, "Log metrics every N steps.")
    eval_batch_size: int = _f(32, "Pairs per evaluation batch.")

    def validate(self) -> None:
        self.model.validate()
        _check(self.token_head in ("", "mean", "sum"), f"token_head={self.token_head!r}: use '', 'mean' or 'sum'")
        _check(bool(self.train_file), "train_file is empty: give a preference-records JSONL")
        _check(0.0 <= self.eval_fraction < 1.0, "eval_fraction must lie in [0, 1)")
        _check(self.epochs > 0 or self.max_steps > 0, "set epochs > 0 or max_steps > 0")
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(self.lr > 0, "lr must be positive")
        _check(self.head_lr >= 0, "head_lr must be >= 0 (0 = same as lr)")
        _check(self.margin_weight >= 0 and self.center_weight >= 0, "margin/center weights must be >= 0")


@dataclass
class EvaluateConfig:
    """Evaluate a policy (BLEU, ROUGE-L, exact match, demo-world attributes) and optionally a reward
    model (pairwise accuracy, calibration)."""

    model: ModelConfig = _f(ModelConfig(), "The policy to evaluate.")
    baseline: ModelConfig | None = _f(None, "Optional second policy (e.g. the active one) evaluated on the same "
                                      "prompts: its figures are baseline/…, and diff/… the paired differences "
                                      "policy − baseline with their bootstrap intervals (the promotion gate).")
    prompts_file: str = _f("", "The held-out prompt set: JSONL with `reference` (and `ground_truth` for attribute "
                           "scores and the verifiable reward); empty = a fresh demo-world eval set of "
                           "`demo_images` scenes.")
    heldout: bool = _f(True, "Whether prompts_file and preference_file are held out of training (the caller's word). "
                       "false: every figure is named train/… instead (measured on training data).")
    verifiable_reward: str = _f("", "A verifiable reward of rewards.REWARDS scored on each greedy answer of the "
                                "prompts with `ground_truth`: policy/verifiable with its 95% bootstrap interval.")
    samples: int = _f(4, "Answers sampled per prompt at temperature 1, besides the greedy one, scored by the verifiable "
                      "reward: policy/verifiable_sampled, the per-prompt mean with its interval. These are the answers a "
                      "round puts in front of annotators; 0 = greedy only.")
    answer_reward_model_path: str = _f("", "Reward-model checkpoint that scores each greedy answer: "
                                       "policy/reward_model_score (the over-optimisation monitor's other side).")
    bootstrap: int = _f(2000, "Bootstrap resamples of the 95% intervals.")
    demo_images: int = _f(100, "Scenes in the generated demo eval set (when prompts_file is empty).")
    demo_task: str = _f("caption", "'caption' or 'vqa' for the generated demo eval set.")
    max_new_tokens: int = _f(32, "Longest answer in tokens (greedy decoding).")
    batch_size: int = _f(16, "Prompts per generate call.")
    reward_model_path: str = _f("", "Optional reward-model checkpoint to evaluate on `preference_file`.")
    preference_file: str = _f("", "Held-out preference records for the reward model.")
    seed: int = _f(1234, "Seed of the generated demo eval set.")

    def validate(self) -> None:
        from .rewards import REWARDS  # plain Python, no torch

        self.model.validate()
        if self.baseline is not None:
            self.baseline.validate()
        _check(not self.verifiable_reward or self.verifiable_reward in REWARDS,
               f"verifiable_reward={self.verifiable_reward!r} is unknown; use one of {sorted(REWARDS)} or ''")
        _check(self.bootstrap >= 100, "bootstrap must be at least 100 resamples")
        _check(self.samples >= 0, "samples must be >= 0")
        _check(self.demo_task in ("caption", "vqa"), "demo_task must be 'caption' or 'vqa'")
        _check(self.demo_images >= 1 and self.batch_size >= 1, "demo_images and batch_size must be >= 1")
        _check(bool(self.reward_model_path) == bool(self.preference_file),
               "reward_model_path and preference_file go together: set both or neither")


CONFIGS: dict[str, type] = {
    "build-demo": BuildDemoConfig,
    "sft": SFTConfig,
    "generate": GenerateConfig,
    "train-reward": RewardConfig,
    "evaluate": EvaluateConfig,
}


def _build(cls: type, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        if dataclasses.is_dataclass(hint):  # an optional section, e.g. evaluate's baseline
            return value if isinstance(value, hint) else _build(hint, value, where)
        origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str):  # a regex for LoRA targets, or a single name
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = (typing.get_args(hint) or (str,))[0]
        return [str(v) for v in value] if item is str else list(value)  # other items: checked by validate()
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def load_config(kind: str, data: dict | str | Path | None = None):
    """Build the config of subcommand `kind` from a dict, a JSON file path or None (defaults), and
    validate it. Raises ConfigError with a message naming the field to change."""
    if kind not in CONFIGS:
        raise ConfigError(f"unknown config kind {kind!r}; one of {sorted(CONFIGS)}")
    if data is None:
        data = {}
    elif isinstance(data, str | Path):
        path = Path(data)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
    cfg = _build(CONFIGS[kind], data, kind)
    cfg.validate()
    return cfg


def to_dict(cfg) -> dict:
    """JSON-ready dict of a config (what `config.json` of a run directory holds)."""
    return dataclasses.asdict(cfg)


def describe(kind: str) -> str:
    """Human-readable list of a config's fields with defaults and help (for `--help-config`)."""
    lines = []

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if dataclasses.is_dataclass(default):
                lines.append(f"{prefix}{f.name}: {f.metadata.get('help', '')}")
                walk(type(default), prefix + f.name + ".")
            else:
                lines.append(f"{prefix}{f.name} = {json.dumps(default)}  # {f.metadata.get('help', '')}")

    walk(CONFIGS[kind], "")
    return "\n".join(lines)


# The policy-optimisation configs (ppo, grpo, rloo, dpo) live in rl_config, which registers them in CONFIGS.
from . import rl_config  # noqa: E402, F401
