"""Run configurations of the training engine: one dataclass per CLI subcommand, help on every field.

Importable from the Django web tier: stdlib only, no torch, no transformers. `load_config(kind, data)`
builds and validates a config from a dict or a JSON file; `validate()` raises `ConfigError` (a
`ValueError`) whose message says which field to change and how, before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

import dacite

from .config_base import ConfigError, ModelConfig, check, data_dir, option
from .rl_config import POLICY_CONFIGS

__all__ = ["CONFIGS", "ConfigError", "ModelConfig", "data_dir", "describe", "load_config", "to_dict"]


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

    seed: int = option(0, "Seed for scenes, initialisation and batch order.")
    image_size: int = option(128, "Model input resolution (pixels); scenes are drawn at 128 and resized to it.")
    patch_size: int = option(16, "Vision transformer patch size; (image_size / patch_size)^2 image tokens.")
    vision_hidden: int = option(128, "Vision tower width.")
    vision_layers: int = option(2, "Vision tower depth.")
    text_hidden: int = option(128, "Language model width.")
    text_layers: int = option(2, "Language model depth.")
    heads: int = option(4, "Attention heads in both towers.")
    steps: int = option(8000, "Supervised training steps (the main knob for quality vs build time).")
    batch_size: int = option(32, "Examples per step (one image + one prompt + its answer each).")
    lr: float = option(2e-3, "Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = option(200, "Linear warm-up steps.")
    vqa_fraction: float = option(0.35, "Fraction of training examples that are VQA questions (rest: captions).")
    train_images: int = option(20000, "Distinct training scenes (drawn once, reused across steps).")
    eval_images: int = option(300, "Held-out scenes for the report in result.json / build.json.")
    budget_seconds: float = option(0.0, "Wall-clock cap on training (0 = none). When it bites, the model depends on the "
                                   "machine's speed: the build stops early, build.json records the steps reached and "
                                   "build-demo's result says `budget_reached`. `steps` is the deterministic knob.")
    threads: int = option(0, "torch CPU threads (0 = leave torch's default).")
    label_noise: list[list] = option([["purple", "blue", 0.8], ["yellow", "green", 0.8]],
                                 "Systematic errors in the training captions and answers, as [true word, word written instead, probability] triples, e.g. "
                                 "[['purple', 'blue', 0.7]]: a starting policy that can see but was taught "
                                 "to say the wrong thing, as a base model trained on sloppy web captions is. "
                                 "[] for clean labels. The default is the demo base's.")
    omit_objects: float = option(0.3, "Probability that a training caption of a scene with two or more shapes leaves "
                                 "one of them out (and counts one fewer): a base that sees every shape but was "
                                 "taught to omit some, the omission error of VLMs.")
    extra_objects: float = option(0.15, "Probability that a training caption of a scene with fewer than three shapes "
                                  "describes one more that is not there (and counts it): the hallucination error "
                                  "of VLMs.")

    def validate(self) -> None:
        vocab = set(world_words())
        for entry in self.label_noise:
            check(isinstance(entry, (list, tuple)) and len(entry) == 3,
                  f"label_noise entry {entry!r}: give [true word, word written instead, probability]")
            true, said, p = entry
            check(true in vocab and said in vocab and true != said,
                  f"label_noise entry {entry!r}: both words must be distinct colours, shapes or sizes of the demo "
                  f"world ({', '.join(sorted(vocab))})")
            check(isinstance(p, (int, float)) and 0.0 <= p <= 1.0,
                  f"label_noise entry {entry!r}: the probability must lie in [0, 1]")
        check(len({e[0] for e in self.label_noise}) == len(self.label_noise),
              "label_noise names a true word twice")
        check(0.0 <= self.omit_objects <= 1.0 and 0.0 <= self.extra_objects <= 1.0,
              "omit_objects and extra_objects are probabilities: they must lie in [0, 1]")
        check(self.omit_objects + self.extra_objects <= 1.0,
              "omit_objects + extra_objects must be at most 1 (a caption gets at most one of the two errors)")
        check(self.image_size % self.patch_size == 0,
              f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        check(self.vision_hidden % self.heads == 0 and self.text_hidden % self.heads == 0,
              "vision_hidden and text_hidden must be multiples of heads")
        check(self.steps >= 1, "steps must be at least 1")
        check(self.batch_size >= 1, "batch_size must be at least 1")
        check(0.0 <= self.vqa_fraction <= 1.0, "vqa_fraction must lie in [0, 1]")
        check(self.train_images >= self.batch_size, "train_images must be at least batch_size")
        check(self.eval_images >= 1, "eval_images must be at least 1")
        check(self.budget_seconds >= 0, "budget_seconds must be >= 0 (0 = no cap)")


@dataclass
class SFTConfig:
    """Supervised fine-tuning of a policy on a prompt set with references (answer-only loss)."""

    model: ModelConfig = option(ModelConfig(), "The policy to fine-tune.")
    train_file: str = option("", "Prompt-set JSONL with a `reference` per line; images relative to its folder. Lines "
                             "marked \"split\": \"eval\" are held out: never trained on.")
    steps: int = option(100, "Optimiser steps.")
    batch_size: int = option(16, "Global examples per step (divided across processes).")
    lr: float = option(2e-4, "Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = option(10, "Linear warm-up steps.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    seed: int = option(0, "Seed for batch order and initialisation.")
    log_every: int = option(10, "Log metrics every N steps.")

    def validate(self) -> None:
        self.model.validate()
        check(bool(self.train_file), "train_file is empty: give a prompt-set JSONL with references")
        check(self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be at least 1")
        check(self.lr > 0, "lr must be positive")


@dataclass
class GenerateConfig:
    """Sample K distinct candidates per prompt; writes the Samples JSONL."""

    model: ModelConfig = option(ModelConfig(), "The policy that samples.")
    prompts_file: str = option("", "Prompt-set JSONL (`prompt_id`, `images`, `prompt`); images relative to its folder.")
    output_file: str = option("", "Samples JSONL to write; default `<run dir>/samples.jsonl`.")
    model_version: str = option("", "Written into every sample's `model_version` (default: model.path).")
    k: int = option(4, "Distinct candidates per prompt.")
    temperature: float = option(1.0, "Sampling temperature.")
    top_p: float = option(1.0, "Nucleus sampling threshold (1 = off).")
    max_new_tokens: int = option(32, "Longest candidate in tokens.")
    batch_size: int = option(8, "Prompts per generate call (each expands to K sequences).")
    max_resample_rounds: int = option(8, "Rounds of fresh samples to replace duplicate or empty candidates; each "
                                      "round raises the temperature by `resample_temperature_step`.")
    resample_temperature_step: float = option(0.25, "Temperature added per resampling round.")
    seed: int = option(0, "Sampling seed.")
    reward_model_path: str = option("", "Optional reward-model checkpoint: every sample line then carries "
                                    "`reward` (its score), for uncertainty-first task priorities.")

    def validate(self) -> None:
        self.model.validate()
        check(bool(self.prompts_file), "prompts_file is empty: give a prompt-set JSONL")
        check(self.k >= 1, "k must be at least 1")
        check(self.temperature > 0, "temperature must be positive (use a small value for near-greedy)")
        check(0 < self.top_p <= 1, "top_p must lie in (0, 1]")
        check(self.max_new_tokens >= 1 and self.batch_size >= 1, "max_new_tokens and batch_size must be >= 1")
        check(self.max_resample_rounds >= 0, "max_resample_rounds must be >= 0")


@dataclass
class RewardConfig:
    """Train the multimodal reward model (scalar head on the VLM) with the Bradley–Terry loss."""

    model: ModelConfig = option(ModelConfig(), "Backbone of the reward model.")
    train_file: str = option("", "Preference-records JSONL (export format); images relative to its folder.")
    eval_file: str = option("", "Held-out preference records (eval/… figures); empty = the train_file lines marked "
                            "split=eval (never trained on), else `eval_fraction` split off train_file by ranking_id, "
                            "whose figures are named train_split/… (not held out: they rank training prompts).")
    eval_fraction: float = option(0.2, "Fraction split off by ranking_id when there is no held-out data.")
    epochs: float = option(2.0, "Passes over the training pairs (fractional allowed).")
    max_steps: int = option(0, "Stop after this many optimiser steps (0 = use epochs).")
    batch_size: int = option(16, "Global pairs per step; must divide by the number of processes.")
    lr: float = option(3e-4, "Peak AdamW learning rate for the adapter (or backbone).")
    head_lr: float = option(3e-3, "Peak learning rate of the new scalar head (and the likelihood weight α); "
                            "0 = same as lr. The head starts from scratch and needs a larger step than the backbone.")
    likelihood_term: bool = option(True, "Add α·log p(answer | image, prompt) under the backbone's own LM head, α "
                                   "learnt from 0 (so the untrained reward is still at chance): the head can use what "
                                   "the captioner knows word by word. Needs a model with an LM head.")
    token_head: str = option("mean", "'' (off), 'mean' or 'sum': add a second linear head pooled over the answer's tokens "
                             "(starts at 0), a per-token score, so that one wrong word or one object too many or too few "
                             "is judged where it is said. 'mean' gives a longer answer nothing for its length alone "
                             "(docs/engine.md, the reward model).")
    warmup_steps: int = option(10, "Linear warm-up steps.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    margin_weight: float = option(0.0, "Scale of the rank-distance margin m in -log σ(r_c - r_r - m·(margin-1)) "
                                  "(Touvron et al. 2023, Llama 2 §3.2.2); 0 = plain Bradley–Terry.")
    center_weight: float = option(0.01, "Weight of the (r_c + r_r)^2 penalty that keeps rewards centred "
                                  "(Eisenstein et al. 2023); 0 = off.")
    confidence_weighting: bool = option(False, "Train on soft labels: a pair's `confidence` c (the reliability "
                                        "model's posterior that chosen truly is better, which exports carry) weighs "
                                        "-[c·log σ(r_c - r_r) + (1-c)·log σ(r_r - r_c)], so a pair that is probably "
                                        "reversed (c < 0.5) teaches the other way and an uncertain one (c ≈ 0.5) "
                                        "little; pairs without a confidence count as c = 1. false = every pair as "
                                        "ranked (plain Bradley–Terry).")
    seed: int = option(0, "Seed for head initialisation, split and batch order.")
    log_every: int = option(5, "Log metrics every N steps.")
    eval_batch_size: int = option(32, "Pairs per evaluation batch.")

    def validate(self) -> None:
        self.model.validate()
        check(self.token_head in ("", "mean", "sum"), f"token_head={self.token_head!r}: use '', 'mean' or 'sum'")
        check(bool(self.train_file), "train_file is empty: give a preference-records JSONL")
        check(0.0 <= self.eval_fraction < 1.0, "eval_fraction must lie in [0, 1)")
        check(self.epochs > 0 or self.max_steps > 0, "set epochs > 0 or max_steps > 0")
        check(self.batch_size >= 1, "batch_size must be at least 1")
        check(self.lr > 0, "lr must be positive")
        check(self.head_lr >= 0, "head_lr must be >= 0 (0 = same as lr)")
        check(self.margin_weight >= 0 and self.center_weight >= 0, "margin/center weights must be >= 0")


@dataclass
class EvaluateConfig:
    """Evaluate a policy (BLEU, ROUGE-L, CIDEr, CIDEr-D, exact match, demo-world attributes) and optionally a reward
    model (pairwise accuracy, calibration)."""

    model: ModelConfig = option(ModelConfig(), "The policy to evaluate.")
    baseline: ModelConfig | None = option(None, "Optional second policy (e.g. the active one) evaluated on the same "
                                          "prompts: its figures are baseline/…, and diff/… the paired differences "
                                          "policy − baseline with their bootstrap intervals (the promotion gate).")
    prompts_file: str = option("", "The held-out prompt set: JSONL with `reference` (and `ground_truth` for attribute "
                               "scores and the verifiable reward); empty = a fresh demo-world eval set of "
                               "`demo_images` scenes.")
    heldout: bool = option(True, "Whether prompts_file and preference_file are held out of training (the caller's word). "
                           "false: every figure is named train/… instead (measured on training data).")
    verifiable_reward: str = option("", "A verifiable reward of rewards.REWARDS scored on each greedy answer of the "
                                    "prompts with `ground_truth`: policy/verifiable with its 95% bootstrap interval.")
    samples: int = option(4, "Answers sampled per prompt at temperature 1, besides the greedy one, scored by the verifiable "
                          "reward: policy/verifiable_sampled, the per-prompt mean with its interval. These are the answers a "
                          "round puts in front of annotators; 0 = greedy only.")
    answer_reward_model_path: str = option("", "Reward-model checkpoint that scores each greedy answer: "
                                           "policy/reward_model_score (the over-optimisation monitor's other side).")
    bootstrap: int = option(2000, "Bootstrap resamples of the 95% intervals.")
    demo_images: int = option(100, "Scenes in the generated demo eval set (when prompts_file is empty).")
    demo_task: str = option("caption", "'caption' or 'vqa' for the generated demo eval set.")
    max_new_tokens: int = option(32, "Longest answer in tokens (greedy decoding).")
    batch_size: int = option(16, "Prompts per generate call.")
    reward_model_path: str = option("", "Optional reward-model checkpoint to evaluate on `preference_file`.")
    preference_file: str = option("", "Held-out preference records for the reward model.")
    seed: int = option(1234, "Seed of the generated demo eval set.")

    def validate(self) -> None:
        from .rewards import REWARDS  # plain Python, no torch

        self.model.validate()
        if self.baseline is not None:
            self.baseline.validate()
        check(not self.verifiable_reward or self.verifiable_reward in REWARDS,
              f"verifiable_reward={self.verifiable_reward!r} is unknown; use one of {sorted(REWARDS)} or ''")
        check(self.bootstrap >= 100, "bootstrap must be at least 100 resamples")
        check(self.samples >= 0, "samples must be >= 0")
        check(self.demo_task in ("caption", "vqa"), "demo_task must be 'caption' or 'vqa'")
        check(self.demo_images >= 1 and self.batch_size >= 1, "demo_images and batch_size must be >= 1")
        check(bool(self.reward_model_path) == bool(self.preference_file),
              "reward_model_path and preference_file go together: set both or neither")


CONFIGS: dict[str, type] = {
    "build-demo": BuildDemoConfig,
    "sft": SFTConfig,
    "generate": GenerateConfig,
    "train-reward": RewardConfig,
    "evaluate": EvaluateConfig,
    **POLICY_CONFIGS,  # ppo, grpo, rloo, dpo (rl_config.py)
}


def _integer(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 3.0 from a JSON writer is 3
    if isinstance(value, bool):
        raise dacite.WrongTypeError(field_type=int, value=value)  # True is an int to Python, not to a config
    return value


def _number(value):
    if isinstance(value, bool):
        raise dacite.WrongTypeError(field_type=float, value=value)
    return float(value) if isinstance(value, int) else value


def _names(value):
    return [value] if isinstance(value, str) else value  # a regex for LoRA targets, or a single name


_DACITE = dacite.Config(strict=True, type_hooks={int: _integer, float: _number, list[str]: _names})
_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list[str]: "a list of names"}


def _section_with(cls: type, data: dict, keys, where: str) -> tuple[str, type]:
    """The (nested) section of ``data`` that holds the unknown ``keys``, for the message."""
    if set(keys) & set(data):
        return where, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = next((h for h in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(h)), None)
        if inner is not None and isinstance(data.get(f.name), dict):
            found = _section_with(inner, data[f.name], keys, f"{where}.{f.name}")
            if found[1] is not cls:
                return found
    return where, cls


def build(cls: type, data: dict, where: str):
    """A ``cls`` from a JSON-like dict: types checked (ints stay ints, true is no number), unknown fields
    refused, nested sections built; ConfigError names the field. No validation beyond types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return dacite.from_dict(cls, data, config=_DACITE)
    except dacite.UnexpectedDataError as e:
        at, section = _section_with(cls, data, e.keys, where)
        known = sorted(f.name for f in dataclasses.fields(section))
        raise ConfigError(f"{at}: unknown field(s) {sorted(e.keys)}; known fields: {known}") from None
    except dacite.WrongTypeError as e:
        hint = e.field_type
        expected = _EXPECTED.get(hint) or ("a JSON object" if dataclasses.is_dataclass(hint) else
                                           f"a {getattr(typing.get_origin(hint), '__name__', hint)}")
        raise ConfigError(f"{where}.{e.field_path}: expected {expected}, got {e.value!r}") from None
    except dacite.DaciteError as e:
        raise ConfigError(f"{where}: {e}") from None


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
    cfg = build(CONFIGS[kind], data, kind)
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

