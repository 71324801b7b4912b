"""GRPO, RLOO and DPO through TRL's trainers, under the engine's run-directory contract.

- GRPO (Shao et al. 2024, DeepSeekMath §4.1) and RLOO (Ahmadian et al. 2024): K answers per prompt,
  reward = Σ weight · term (reward model, rule rewards, user functions; `rl_common.ComposedReward`), each term a
  TRL reward function with its weight, so TRL logs every term's mean.
- DPO (Rafailov et al. 2023, eq. 7): the exported preference records, read directly.

The policy is loaded by `loading.load_model` (LoRA / QLoRA, or continuing `model.adapter_path`) and handed
to the trainer as a PEFT model, so TRL's reference is the adapter disabled, as in our PPO. Metrics go to
`metrics.jsonl` (step, total_steps) through a callback, the adapter to `checkpoint/` through RunDir.
TRL is imported inside the functions (it is heavy; see STYLE.md).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch

from lensloop import formats

from . import adalora
from .config import to_dict
from .data import encode_completions, load_images, read_preferences
from .heldout import split_lines, warn_not_heldout
from .rl_common import ComposedReward, evaluate_reward, set_threads, split_prompts, suppress_media_tokens
from .rl_config import DPOConfig, GRPOConfig, RLOOConfig
from .rundir import RunDir

log = logging.getLogger(__name__)


def prompt_dataset(records: list[dict]):
    """A `datasets.Dataset` for GRPO/RLOO: prompt (conversational), images (PIL), ground_truth (JSON)."""
    from datasets import Dataset

    cache: dict = {}
    return Dataset.from_list([{"prompt": formats.user_turn(r["prompt"], len(r["images"])),
                               "images": load_images(r["images"], cache),
                               "ground_truth": json.dumps(r.get("ground_truth"))} for r in records])


def preference_dataset(records: list[dict]):
    """A `datasets.Dataset` in TRL's conversational preference format from exported preference records."""
    from datasets import Dataset

    cache: dict = {}
    return Dataset.from_list([{**formats.preference_row(r), "images": load_images(r["images"], cache)}
                              for r in records])


def _trainer_args(cfg, run_dir: str, **extra) -> dict:
    """TrainingArguments shared by the three trainers (CPU flags from docs: tiny-vlm notes)."""
    cpu = cfg.model.device == "cpu" or not torch.cuda.is_available()
    bf16 = not cpu and torch.cuda.is_bf16_supported()
    return {"output_dir": str(Path(run_dir) / "trl"), "max_steps": cfg.steps, "learning_rate": cfg.lr,
            "lr_scheduler_type": "constant", "seed": cfg.seed, "logging_steps": 1, "report_to": "none",
            "save_strategy": "no", "remove_unused_columns": False, "use_cpu": cpu, "bf16": bf16, "fp16": False,
            "disable_tqdm": True, "max_grad_norm": cfg.max_grad_norm, "dataloader_num_workers": 0, **extra}


class _Clock:
    """Training wall time without the evaluation pauses."""

    def __init__(self):
        self.start, self.paused = time.monotonic(), 0.0

    def seconds(self) -> float:
        return time.monotonic() - self.start - self.paused


def _run_dir_callback(run: RunDir, clock: _Clock, evaluate=None, eval_every: int = 0):
    from transformers import TrainerCallback

    class RunDirCallback(TrainerCallback):
        """Mirror TRL's logs into metrics.jsonl with step / total_steps (the Django job tails it), and
        evaluate every `eval_every` steps (time excluded from train_seconds)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
            run.log_metrics(state.global_step, state.max_steps, train_seconds=clock.seconds(), **logs)

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if evaluate is None or not eval_every or step % eval_every or step == state.max_steps:
                return
            t = time.monotonic()
            metrics = evaluate(kwargs["model"])
            clock.paused += time.monotonic() - t
            if metrics:
                run.log_metrics(step, state.max_steps, train_seconds=clock.seconds(), **_numbers(metrics))

    return RunDirCallback()


def _load_policy(cfg):
    from .loading import load_model

    policy, processor = load_model(cfg.model, trainable=True)
    if not hasattr(policy, "peft_config"):
        raise ValueError(f"{type(cfg).__name__} needs a LoRA policy (model.lora=true): the reference is the "
                         "adapter disabled")
    if adalora.adalora_model(policy) is not None:
        # GRPO and RLOO (beta > 0) add their reference as a second adapter with the policy's config and copy
        # its weights in; AdaLoRA allows one trainable adapter, so that copy is added frozen (what it is for).
        add = policy.add_adapter

        def add_frozen(name, config, *args, **kwargs):
            frozen = copy.copy(config)
            frozen.inference_mode = True
            return add(name, frozen, *args, **kwargs)

        policy.add_adapter = add_frozen
    return policy, processor


def for_trl(processor):
    """The processor as TRL's GRPO and RLOO get it. TRL 1.16 hands every processor output to a log-prob
    method with a fixed argument list, so PaliGemma's ``labels`` and LLaVA-OneVision's ``batch_num_images``
    fail there (RLOO always, GRPO with beta > 0). This processor leaves them out: the labels are targets TRL
    does not use, and ``batch_num_images`` of ones (one image per prompt) is what the model assumes without it.
    With several images in a prompt, OneVision keeps it and TRL fails: train such prompts with PPO."""
    from .loading import processor_subclass

    def attributes(cls):
        def __call__(self, *args, **kwargs):
            out = cls.__call__(self, *args, **kwargs)
            out.pop("labels", None)
            counts = out.get("batch_num_images")
            if counts is not None and bool((torch.as_tensor(counts) == 1).all()):
                out.pop("batch_num_images")
            return out

        return {"__call__": __call__}

    adapted = copy.copy(processor)
    adapted.__class__ = processor_subclass(type(processor), "ForTRL", attributes)
    return adapted


def check_dpo_support(processor) -> None:
    """TRL 1.16's DPO collator calls the processor without images, which PaliGemma's refuses: say so before
    training, with what works instead."""
    if type(processor).__name__.startswith("PaliGemma"):
        raise ValueError("DPO through TRL 1.16 cannot train PaliGemma: TRL's DPO collator calls the processor "
                         "without images, and PaliGemma's processor requires them. Train PaliGemma with PPO, "
                         "GRPO or RLOO on a reward model (or SFT) instead")


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def _save(run: RunDir, trainer, processor) -> str:
    with run.checkpoint() as tmp:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return str(run.checkpoint_path)


# ---- GRPO and RLOO -------------------------------------------------------------------------------------


def train_group_policy(cfg: GRPOConfig, run_dir: str, method: str = "grpo") -> dict:
    """GRPO (method 'grpo') or RLOO (method 'rloo') through TRL; returns the result dict."""
    from accelerate import PartialState

    state = PartialState()
    run = RunDir(run_dir, to_dict(cfg), is_main=state.is_main_process)
    with run:
        set_threads(cfg.threads)
        result = _train_group(cfg, run_dir, run, method, state)
        run.write_result(result)
        return result


def _train_group(cfg: GRPOConfig, run_dir: str, run: RunDir, method: str, state) -> dict:
    if method == "grpo":
        from trl import GRPOConfig as TRLConfig
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as TRLConfig
        from trl import RLOOTrainer as Trainer

    split = split_prompts(cfg)
    train, held = split.train, split.measure
    device = str(state.device)
    reward_fn = ComposedReward.from_config(cfg, device=device)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device=device))
    policy, processor = _load_policy(cfg)
    suppress = suppress_media_tokens(policy, processor)
    reward_funcs, reward_weights = reward_fn.trl_functions()
    image_cache: dict = {}
    before = evaluate_reward(policy, processor, held, reward_fn, max_new_tokens=cfg.max_new_tokens,
                             image_cache=image_cache, prefix=split.prefix) if state.is_main_process else {}
    if before:
        run.log_metrics(0, cfg.steps, **_numbers(before), train_seconds=0.0)
    args = TRLConfig(**_trainer_args(
        cfg, run_dir, per_device_train_batch_size=cfg.batch_size // state.num_processes,
        num_generations=cfg.num_generations, max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature,
        beta=cfg.beta, generation_kwargs={"suppress_tokens": suppress} if suppress else None,
        reward_weights=reward_weights))
    def evaluate(model) -> dict:
        if not state.is_main_process:
            return {}
        model = trainer.accelerator.unwrap_model(model)
        return evaluate_reward(model, processor, held, reward_fn, max_new_tokens=cfg.max_new_tokens,
                               image_cache=image_cache, prefix=split.prefix)

    clock = _Clock()
    trainer = Trainer(model=policy, reward_funcs=reward_funcs, args=args, train_dataset=prompt_dataset(train),
                      processing_class=for_trl(processor), callbacks=[_run_dir_callback(run, clock, evaluate, cfg.eval_every), adalora.callback()])
    clock.start = time.monotonic()
    out = trainer.train()
    seconds = clock.seconds()
    logs = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
    last = logs[-1] if logs else {}
    result = {"method": method, "steps": trainer.state.global_step, "processes": state.num_processes,
              "train_seconds": round(seconds, 2),
              "samples_per_second": round(trainer.state.global_step * cfg.batch_size / max(seconds, 1e-9), 2),
              "train_loss": out.training_loss, "objective/scores": last.get("reward"), "objective/kl": last.get("kl"),
              "held_out_prompts": len(held) if split.heldout else 0, "heldout": split.source}
    if state.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        after = evaluate_reward(model, processor, held, reward_fn, max_new_tokens=cfg.max_new_tokens,
                                image_cache=image_cache, prefix=split.prefix)
        result.update(after)
        before_prefix = split.prefix[:-1] + "_before/"  # eval_before/…, or train_before/… when not held out
        result.update({k.replace(split.prefix, before_prefix, 1): v for k, v in _numbers(before).items()})
        run.log_metrics(trainer.state.global_step, cfg.steps, **_numbers(after), train_seconds=seconds)
        result["checkpoint"] = _save(run, trainer, processor)
    state.wait_for_everyone()
    return result


def train_grpo(cfg: GRPOConfig, run_dir: str) -> dict:
    return train_group_policy(cfg, run_dir, "grpo")


def train_rloo(cfg: RLOOConfig, run_dir: str) -> dict:
    return train_group_policy(cfg, run_dir, "rloo")


# ---- DPO -----------------------------------------------------------------------------------------------


@torch.no_grad()
def logprob_margin(model, processor, records: list[dict], batch_size: int = 32) -> float:
    """Mean over pairs of log π(chosen | x) − log π(rejected | x) (sequence log-probabilities): the
    quantity DPO raises relative to the reference (Rafailov et al. 2023, eq. 7)."""
    from .ops import gather_token_logprobs

    if not records:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cache: dict = {}
    margins = []
    for s in range(0, len(records), batch_size):
        chunk = records[s:s + batch_size]
        ims = [load_images(r["images"], cache) for r in chunk]
        seq = []
        for key in ("chosen", "rejected"):
            batch = encode_completions(processor, ims, [r["prompt"] for r in chunk], [r[key] for r in chunk])
            batch = batch.to(device)
            logits = model(**batch.inputs).logits[:, :-1]
            ids = batch.inputs["input_ids"][:, 1:]
            lp = gather_token_logprobs(logits, ids) * batch.completion_mask[:, 1:]
            seq.append(lp.sum(-1))
        margins.extend((seq[0] - seq[1]).tolist())
    model.train(was_training)
    return float(sum(margins) / len(margins))


def train_dpo(cfg: DPOConfig, run_dir: str) -> dict:
    """DPO through TRL's DPOTrainer on exported preference records; returns the result dict."""
    from accelerate import PartialState

    state = PartialState()
    run = RunDir(run_dir, to_dict(cfg), is_main=state.is_main_process)
    with run:
        set_threads(cfg.threads)
        result = _train_dpo(cfg, run_dir, run, state)
        run.write_result(result)
        return result


def _train_dpo(cfg: DPOConfig, run_dir: str, run: RunDir, state) -> dict:
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    records = read_preferences(cfg.train_file)
    if not records:
        raise ValueError(f"{cfg.train_file}: no preference records")
    split = split_lines(records, read_preferences(cfg.eval_file) if cfg.eval_file else None,
                        train_file=cfg.train_file, eval_file=cfg.eval_file)
    train = split.train
    if not train:
        raise ValueError(f"{cfg.train_file}: no training pairs (every line is split=eval)")
    if not split.heldout:
        warn_not_heldout(log, "no eval_file and no split=eval pairs",
                         f"the log-probability margin is measured on the first {cfg.eval_pairs} training pairs")
        split.measure = train
    held = split.measure[: cfg.eval_pairs]
    after_key, before_key = f"{split.prefix}logprob_margin", f"{split.prefix[:-1]}_before/logprob_margin"
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device=str(state.device)))
    policy, processor = _load_policy(cfg)
    check_dpo_support(processor)
    before = logprob_margin(policy, processor, held) if state.is_main_process else math.nan
    args = TRLDPOConfig(**_trainer_args(cfg, run_dir, per_device_train_batch_size=cfg.batch_size // state.num_processes,
                                        beta=cfg.beta, max_length=None))
    clock = _Clock()
    trainer = DPOTrainer(model=policy, args=args, train_dataset=preference_dataset(train), processing_class=processor,
                         callbacks=[_run_dir_callback(run, clock), adalora.callback()])
    clock.start = time.monotonic()
    out = trainer.train()
    seconds = clock.seconds()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    last = logs[-1] if logs else {}
    result = {"method": "dpo", "steps": trainer.state.global_step, "processes": state.num_processes,
              "train_pairs": len(train), "heldout": split.source, "train_seconds": round(seconds, 2),
              "train_loss": out.training_loss,
              **{k: v for k, v in last.items() if k.startswith(("rewards/", "logps/"))}}
    if state.is_main_process:
        after = logprob_margin(trainer.accelerator.unwrap_model(trainer.model), processor, held)
        result.update({before_key: before, after_key: after, f"{split.prefix}pairs": len(held)})
        run.log_metrics(trainer.state.global_step, cfg.steps, **{after_key: after})
        result["checkpoint"] = _save(run, trainer, processor)
    state.wait_for_everyone()
    return result
