"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", §2.1, fig. 2) as a
PEFT method of its own.

Each adapted module's output h gets a small residual block: h + W_up · act(W_down · h + b_down) + b_up, with
W_down: d → d / reduction_factor and W_up initialised to zero, so that a fresh adapter is exactly the identity
and training starts from the base model. Houlsby puts one after the attention's output projection and one after
the feed-forward block of every layer; here they wrap the language model's `o_proj` and/or `down_proj` (the
output projection of each sub-layer, before its residual add), which is that place.

Why a PEFT tuner rather than hooks: PEFT 0.21 has no such method, and every part of the engine that holds an
adapter expects a `PeftModel` — the PPO reference is `policy.disable_adapter()`, TRL's GRPO and DPO take the
reference the same way, checkpoints are `save_pretrained` folders that `PeftModel.from_pretrained` loads
(`model.adapter_path`, the reward model's `adapter/`). So the method is a `BaseTuner` with its config class,
entered into PEFT's own tables under the peft_type `BOTTLENECK_ADAPTER` (`register`); adapter_config.json then
names it, and loading finds it, like any built-in method. `PeftType` is a closed enum, so PEFT's
`register_peft_method` refuses new names; the tables themselves are plain dicts, looked up by the string in
adapter_config.json, which is all that registration does.

It wraps whatever the target module returns, so it runs on 4-bit (bitsandbytes) weights too: the adapter's own
weights stay in the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

PEFT_TYPE = "BOTTLENECK_ADAPTER"
PREFIX = "bottleneck_"

# Names of the modules an adapter follows, per placement: the output projection of attention and of the MLP in
# the language models of the families lensloop loads (Llama, Qwen2, Gemma, Mistral: o_proj / down_proj; OPT,
# Phi and CLIP-like blocks: out_proj / fc2).
PLACEMENT_MODULES = {"attention": ("o_proj", "out_proj"), "mlp": ("down_proj", "fc2")}

NON_LINEARITIES = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def placement_modules(placement: str) -> dict[str, list[str]]:
    """Per part of a layer ('attention', 'mlp'), the module names the adapters of `placement` ('attention', 'mlp'
    or 'both') follow."""
    return {part: list(names) for part, names in PLACEMENT_MODULES.items() if placement in (part, "both")}


@dataclass
class BottleneckConfig(PeftConfig):
    """The PEFT config of a bottleneck adapter; saved as adapter_config.json."""

    target_modules: list[str] | str | None = field(default=None, metadata={
        "help": "Modules whose output gets an adapter: names (matched as suffixes) or one regex."})
    reduction_factor: int = field(default=16, metadata={
        "help": "The bottleneck has (output width of the module) / reduction_factor units (at least 1)."})
    non_linearity: str = field(default="gelu", metadata={"help": f"One of {', '.join(NON_LINEARITIES)}."})
    modules_to_save: list[str] | None = field(default=None, metadata={
        "help": "Modules trained in full beside the adapters and saved with them."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Only these layers."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if self.reduction_factor < 1:
            raise ValueError(f"reduction_factor={self.reduction_factor}: must be at least 1")
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity={self.non_linearity!r}: one of {', '.join(NON_LINEARITIES)}")


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """A module wrapped with bottleneck adapters (one per adapter name) on its output."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("non_linearity",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.non_linearity: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        width = getattr(self.get_base_layer(), "out_features", None)
        if not isinstance(width, int):
            raise ValueError(f"a bottleneck adapter follows a linear layer (nn.Linear or a bitsandbytes one), not a "
                             f"{type(self.get_base_layer()).__name__}; choose other target modules")
        self.out_features = width
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        hidden = max(1, self.out_features // config.reduction_factor)
        self.bottleneck_down[adapter_name] = nn.Linear(self.out_features, hidden)
        up = nn.Linear(hidden, self.out_features)
        nn.init.zeros_(up.weight)  # a fresh adapter is the identity (Houlsby et al. 2019, §2.1)
        nn.init.zeros_(up.bias)
        self.bottleneck_up[adapter_name] = up
        self.non_linearity[adapter_name] = config.non_linearity
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result  # exactly the base module: the reference policy
        for name in self.active_adapters:
            if name not in self.bottleneck_down:
                continue
            down, up = self.bottleneck_down[name], self.bottleneck_up[name]
            h = result.to(down.weight.dtype)
            act = NON_LINEARITIES[self.non_linearity[name]]()
            result = result + up(act(down(h))).to(result.dtype)
        return result

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError("a bottleneck adapter has a non-linearity between its projections, so it cannot be merged "
                         "into the weights of the module it follows; keep it as an adapter")

    def unmerge(self) -> None:
        """Nothing is ever merged (see `merge`)."""


class BottleneckModel(BaseTuner):
    """Injects `BottleneckLayer`s at the config's target modules."""

    prefix: str = PREFIX
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, config)
            return
        new_module = BottleneckLayer(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an additional adapter is not trainable until activated
        self._replace_module(parent, target_name, new_module, target)


def register() -> None:
    """Enter the method into PEFT's tables (idempotent): `get_peft_model` builds it from a `BottleneckConfig`, and
    `PeftModel.from_pretrained` / `PeftConfig.from_pretrained` load a folder whose adapter_config.json says
    `"peft_type": "BOTTLENECK_ADAPTER"`."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = BottleneckConfig
    PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = BottleneckModel
    PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = PREFIX


register()
