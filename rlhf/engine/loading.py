"""Load any Hugging Face VLM (AutoModelForImageTextToText + AutoProcessor) for sampling or training.

Device and dtype chosen sensibly, LoRA on the language model's attention by default, QLoRA (4-bit NF4
through bitsandbytes), gradient checkpointing on request, and errors that say what to fix when the path,
the model class or the processor is wrong. The demo model goes through exactly the same path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from .config import ModelConfig
from .data import fallback_chat_template
from .registry import Registry

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model or processor that cannot be used; the message says what to fix."""


# Known failure messages of mismatched processors → what to change (see docs/engine.md).
_PROCESSOR_HINTS = [
    ("Image features and image tokens do not match",
     "the processor expands each image to a different number of tokens than the vision tower produces: "
     "check the processor's patch_size, vision_feature_select_strategy and num_additional_image_tokens "
     "against the model config"),
    ("unsupported operand type(s) for //",
     "the processor has no patch_size: save it with patch_size set (LlavaProcessor(patch_size=...))"),
    ("doesn't match model", "the image processor resizes to a different size than the vision tower expects: "
     "set the image processor's size/crop_size to the model's vision_config.image_size"),
    ("number of <image> tokens", "the chat template does not insert the image token; fix the processor's "
     "chat_template"),
]

VISION_MODULE_WORDS = ("vision", "visual", "image_encoder", "multi_modal_projector", "connector", "mm_projector")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' → cuda if available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device={name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' → bfloat16 on a CUDA device that supports it, float32 otherwise (CPU bf16 is slow)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


MODEL_PATHS: Registry[Callable[[], str]] = Registry("named model", plugins=("rlhf.engine.demo.build",))
"""Model paths that name a model rather than a folder: name → a function returning its folder (raising
ModelLoadError when it cannot). 'demo' is registered by demo/build.py, imported on the first lookup."""


def resolve_model_path(path: str) -> str:
    """A name of `MODEL_PATHS` → its folder ('demo': the demo base shipped in the package, rlhf/engine/demo/base,
    checked against its checksums); a local folder must exist and hold config.json; anything shaped like
    `org/name` is passed on as a hub id."""
    if path in MODEL_PATHS:
        return MODEL_PATHS[path]()
    p = Path(path)
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: point model.path at a folder written by "
                                 "save_pretrained (or at a checkpoint/ of a run)")
        return str(p)
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None and not path.startswith(".")
    if not looks_like_hub_id:
        raise ModelLoadError(f"model path {path} does not exist: give a local model folder, a hub id "
                             "('org/name'), or 'demo' after `python -m rlhf.engine build-demo`")
    return path


def check_is_vlm(path: str):
    """Load the config and fail clearly unless AutoModelForImageTextToText knows its class."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the model config at {path}: {e}. If this is a hub id, the machine "
                             "may have no hub access: download the model and give its local folder") from e
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelLoadError(f"{path} is a '{config.model_type}' model, not a vision-language model that "
                             "AutoModelForImageTextToText can load: choose a VLM (e.g. LLaVA, Qwen2-VL, "
                             "SmolVLM, PaliGemma) or the demo model")
    return config


def load_processor(path: str):
    """AutoProcessor with an image processor and a tokenizer; pad token set; left padding; a chat template
    (``data.FALLBACK_CHAT_TEMPLATE`` where the processor has none).

    Without torchvision, the processors of the families that also take video (Qwen2-VL, Qwen2.5-VL,
    LLaVA-OneVision, SmolVLM) are loaded without their video processor, which needs it; their image
    processors fall back to the PIL ones. Other missing packages give a ModelLoadError naming them."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    try:
        processor = None if is_torchvision_available() else _images_only_processor(path)
        processor = processor or AutoProcessor.from_pretrained(path)
    except ImportError as e:
        raise ModelLoadError(f"cannot load the processor of {path}: a package it needs is missing ({e}); "
                             "install it into lensloop's environment") from e
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"cannot load a processor from {path}: {e}. Save the processor next to the "
                             "model (processor.save_pretrained(path))") from e
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"the processor at {path} is a {type(processor).__name__} without an image "
                             "processor and a tokenizer: a VLM needs a multimodal processor (AutoProcessor)")
    tok = processor.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if not getattr(processor, "chat_template", None):
        processor.chat_template = fallback_chat_template(processor)
    return processor


class _NoVideo:
    """Stands in for the video processor of a processor loaded without one: the settings that image-only
    calls read (SmolVLM's chat template reads num_frames and fps) are None; anything else is missing, with the
    reason (an AttributeError, so that transformers' probing with getattr(..., default) still works)."""

    num_frames = None
    fps = None

    def __getattr__(self, name):
        raise AttributeError(f"{name}: this processor was loaded without its video processor (torchvision is "
                             "not installed); lensloop passes images only")


def _images_only_processor(path: str):
    """The model's processor class without its video processor, or None when the class has no video
    processor (AutoProcessor then loads it as usual)."""
    import json

    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = ""
    for saved in ("processor_config.json", "tokenizer_config.json"):  # a processor saved on its own
        file = Path(path) / saved
        if not name and file.is_file():
            name = json.loads(file.read_text()).get("processor_class") or ""
    if not name:
        try:
            name = PROCESSOR_MAPPING_NAMES.get(AutoConfig.from_pretrained(path).model_type) or ""
        except (OSError, ValueError):
            return None
    cls = getattr(transformers, name, None)
    if cls is None or "video_processor" not in cls.get_attributes():
        return None
    return _images_only_class(cls).from_pretrained(path)


def processor_subclass(cls, suffix: str, make_attributes) -> type:
    """A subclass of processor class ``cls`` with the attributes ``make_attributes(cls)`` returns, made once.
    It keeps the class's name (a processor it saves stays loadable by AutoProcessor) and is importable from
    this module under another, ``_<name><suffix>`` (so that it pickles)."""
    qualname = f"_{cls.__qualname__.strip('_')}{suffix}"
    if qualname not in globals():
        globals()[qualname] = type(cls.__name__, (cls,), {**make_attributes(cls), "__qualname__": qualname,
                                                          "__module__": __name__})
    return globals()[qualname]


def _images_only_class(cls):
    """``cls`` whose attributes leave out ``video_processor``."""
    def get_attributes(klass):
        return [a for a in cls.get_attributes() if a != "video_processor"]

    def from_args_and_dict(klass, args, processor_dict, **kwargs):  # SmolVLM's __init__ requires the argument
        return super(klass, klass).from_args_and_dict(args, processor_dict, video_processor=None, **kwargs)

    return processor_subclass(cls, "ImagesOnly", lambda _: {
        "get_attributes": classmethod(get_attributes), "from_args_and_dict": classmethod(from_args_and_dict),
        "video_processor": _NoVideo()})


def lora_targets(model: torch.nn.Module, names: list[str], language_model_only: bool,
                 setting: str = "LoRA targets") -> str | list[str]:
    """PEFT `target_modules`: a regex matching module names ending in one of `names`, outside the vision
    tower and projector when `language_model_only`. Fails when nothing matches, naming `setting`."""
    if len(names) == 1 and any(c in names[0] for c in "*()|^$\\"):
        return names[0]  # a user-supplied regex, passed through
    alternatives = "|".join(re.escape(n) for n in names)
    if language_model_only:
        exclude = "|".join(VISION_MODULE_WORDS)
        pattern = rf"^(?!.*({exclude})).*\.({alternatives})$"
    else:
        pattern = rf"^(.*\.)?({alternatives})$"
    matched = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    if not matched:
        raise ModelLoadError(f"no module matches {setting} {names} (language_model_only="
                             f"{language_model_only}); look at model.named_modules() for the right names")
    return pattern


# Feed-forward output projections among the target names: IA3 scales their input instead of their output.
IA3_FEEDFORWARD = ("down_proj", "fc2", "w2", "dense_4h_to_h", "wo")


def peft_config(model: torch.nn.Module, cfg: ModelConfig):
    """The PEFT config of `cfg.peft_method` (the one place it is built): LoRA (Hu et al. 2021), DoRA (Liu et al.
    2024), IA3 (Liu et al. 2022), LoHa and LoKr (LyCORIS), AdaLoRA (Zhang et al. 2023) on
    `cfg.lora_target_modules`; prompt tuning (Lester et al. 2021, `prompt_tuning.py`); bottleneck adapters
    (Houlsby et al. 2019, `bottleneck.py`) after the modules of `cfg.bottleneck_placement`."""
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig

    method = cfg.peft_method
    if method == "prompt_tuning":
        from . import prompt_tuning

        if refused := prompt_tuning.refusal(model):
            raise ModelLoadError(refused)
        return prompt_tuning.config(cfg.prompt_tuning_tokens)
    save = modules_to_save(model, cfg.lora_modules_to_save) or None
    if method == "bottleneck_adapter":
        from . import bottleneck

        parts = bottleneck.placement_modules(cfg.bottleneck_placement)
        for part, names in parts.items():  # each part must be found, not just one of them
            lora_targets(model, names, cfg.lora_language_model_only,
                         setting=f"model.bottleneck_placement={cfg.bottleneck_placement!r}: the {part} outputs")
        where = lora_targets(model, [n for names in parts.values() for n in names], cfg.lora_language_model_only)
        return bottleneck.BottleneckConfig(target_modules=where, reduction_factor=cfg.bottleneck_reduction_factor,
                                           modules_to_save=save)
    targets = lora_targets(model, cfg.lora_target_modules, cfg.lora_language_model_only)
    if method in ("lora", "dora"):
        extra = {"use_dora": True} if method == "dora" else {}
        return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, modules_to_save=save, bias="none", **extra)
    if method == "ia3":
        feedforward = [n for n in cfg.lora_target_modules if n in IA3_FEEDFORWARD]
        ff = lora_targets(model, feedforward, cfg.lora_language_model_only) if feedforward else []
        return IA3Config(target_modules=targets, feedforward_modules=ff, modules_to_save=save)
    if method in ("loha", "lokr"):
        cls = LoHaConfig if method == "loha" else LoKrConfig
        return cls(r=cfg.lora_r, alpha=cfg.lora_alpha, module_dropout=cfg.lora_dropout, target_modules=targets,
                   modules_to_save=save)
    if method == "adalora":
        # Ranks start at 1.5 × r and are pruned to r on average (the paper's 12 → 8); the schedule's length is
        # the run's, set by the training loop (rlhf/engine/adalora.py) once it knows its steps.
        from peft import AdaLoraConfig

        return AdaLoraConfig(init_r=cfg.lora_r + (cfg.lora_r + 1) // 2, target_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                             lora_dropout=cfg.lora_dropout, target_modules=targets, modules_to_save=save, bias="none",
                             total_step=1)
    raise ModelLoadError(f"model.peft_method={method!r} cannot be applied here (validate the config: it says why "
                         "and what to use instead)")


def apply_lora(model, cfg: ModelConfig, tokenizer=None):
    """Wrap `model` in a PEFT adapter of `cfg.peft_method` (LoRA by default) per `cfg`; prompt tuning's
    virtual tokens start as words of `tokenizer`."""
    from peft import get_peft_model

    from . import prompt_tuning

    model = get_peft_model(model, peft_config(model, cfg))
    if prompt_tuning.is_prompt_tuned(model):
        if tokenizer is None:
            raise ModelLoadError("prompt tuning starts its virtual tokens from the vocabulary: pass the tokenizer")
        prompt_tuning.init_from_vocabulary(model, tokenizer)
        prompt_tuning.attach(model)
    return model


def modules_to_save(model: torch.nn.Module, names: list[str]) -> list[str]:
    """`names` for PEFT's `modules_to_save` (matched as name suffixes), each checked to match a module."""
    modules = [n for n, _ in model.named_modules()]
    for name in names:
        if not any(m == name or m.endswith("." + name) for m in modules):
            raise ModelLoadError(f"model.lora_modules_to_save: no module is named {name!r} or ends with "
                                 f"'.{name}'; look at model.named_modules() for the right names")
    return list(names)


def _quantization_config(cfg: ModelConfig):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ModelLoadError("model.qlora=true needs bitsandbytes: pip install 'bitsandbytes>=0.50'") from e
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=list(cfg.qlora_skip_modules))


def load_model(cfg: ModelConfig, *, trainable: bool = False):
    """Load (model, processor) per `cfg`.

    trainable=False: eval mode, adapter (if any) merged into the forward but frozen.
    trainable=True: LoRA/QLoRA adapters (or all weights if `cfg.lora` is false) require grad.
    """
    from transformers import AutoModelForImageTextToText

    path = resolve_model_path(cfg.path)
    check_is_vlm(path)
    processor = load_processor(path)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs = {"dtype": dtype}
    if cfg.qlora:
        kwargs["quantization_config"] = _quantization_config(cfg)
        kwargs["device_map"] = {"": str(device)}
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the model weights at {path}: {e}") from e
    if not cfg.qlora:
        model.to(device)
    elif trainable and device.type == "cpu":
        _keep_4bit_weights_trainable_on_cpu(model)
    tok = processor.tokenizer
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if cfg.check_processor:
        check_processor(model, processor)

    if cfg.qlora and trainable:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing and trainable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora:
            model.enable_input_require_grads()

    if cfg.adapter_path:
        from peft import PeftModel

        from . import bottleneck, prompt_tuning  # noqa: F401  (bottleneck registers its method with PEFT)

        if not (Path(cfg.adapter_path) / "adapter_config.json").is_file():
            raise ModelLoadError(f"model.adapter_path={cfg.adapter_path} holds no adapter_config.json")
        model = PeftModel.from_pretrained(model, cfg.adapter_path, is_trainable=trainable)
        if prompt_tuning.is_prompt_tuned(model) and (refused := prompt_tuning.refusal(model.get_base_model())):
            raise ModelLoadError(refused)
        prompt_tuning.attach(model)
    elif cfg.lora and trainable:
        model = apply_lora(model, cfg, processor.tokenizer)
    elif trainable:
        model.requires_grad_(True)
    model.train(trainable)
    return model, processor


def _keep_4bit_weights_trainable_on_cpu(model) -> None:
    """bitsandbytes (0.50) repacks a 4-bit layer's weights for a fused inference kernel the first time the
    layer runs in eval mode without gradients on a CPU with AVX512-BF16, and from then on always uses that
    kernel, which passes no gradient to the layer's input: every LoRA before such a layer stops learning.
    Our own processor check runs exactly such a forward pass. Training on CPU must keep the plain path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def check_processor(model, processor) -> None:
    """One tiny forward pass on a batch of two prompts with a blank image each (a batch, because processors
    that misread a batch's images fail only with more than one); known mismatch errors become ModelLoadError
    with a fix."""
    from PIL import Image

    from .data import encode_prompts

    try:
        blank = [[Image.new("RGB", (32, 32), (128, 128, 128))], [Image.new("RGB", (48, 40), (96, 96, 96))]]
        batch = encode_prompts(processor, blank, ["check", "a longer check"])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.no_grad():
            model(**batch)
    except (ValueError, TypeError, RuntimeError) as e:
        msg = str(e)
        for needle, hint in _PROCESSOR_HINTS:
            if needle in msg:
                raise ModelLoadError(f"processor and model disagree: {hint} (original error: {msg})") from e
        raise ModelLoadError(f"processor and model disagree on a test input: {msg}") from e


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
