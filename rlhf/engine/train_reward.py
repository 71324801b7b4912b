"""Reward-model training on preference records (Bradley–Terry), runnable unchanged under
`accelerate launch` (DDP on GPUs, gloo on CPUs, DeepSpeed by accelerate config).

Steps: 1 read + split records → 2 load backbone + LoRA, new head (+ likelihood weight α = 0) → 3 AdamW
(head at its own, higher learning rate) with warm-up + cosine →
4 per step: chosen and rejected in one forward, BT loss (+ margin, + centering; with `confidence_weighting`
each pair's soft label c, the export's `confidence`) → 5 held-out accuracy and
ECE before and after → 6 checkpoint (temp name, renamed) → result.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time

import torch

from .adalora import Schedule
from .config import RewardConfig, to_dict
from .data import DataError, encode_completions, load_images, read_preferences
from .evaluation import evaluate_pairs
from .heldout import EVAL, split_lines, warn_not_heldout
from .losses import bradley_terry_loss, reward_centering_loss, soft_bradley_terry_loss
from .reward_model import RewardModel, init_reward_model, save_reward_model
from .rundir import RunDir, progress
from .schedules import warmup_cosine_schedule

log = logging.getLogger(__name__)


def split_by_ranking(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic train/eval split by `ranking_id` (or `id`), so pairs of one ranking never straddle it."""
    def bucket(r: dict) -> float:
        key = f"{seed}:{r.get('ranking_id', r.get('id'))}"
        return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    train = [r for r in records if bucket(r) >= eval_fraction]
    held = [r for r in records if bucket(r) < eval_fraction]
    return train, held


def check_confidences(records: list[dict], path: str) -> int:
    """Check each record's optional `confidence` (null or a number in [0, 1]); returns how many carry one."""
    n = 0
    for i, r in enumerate(records, 1):
        c = r.get("confidence")
        if c is None:
            continue
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
            raise DataError(f"{path}:{i}: confidence={c!r}: must be null or a number in [0, 1]")
        n += 1
    return n


def pair_confidence(record: dict) -> float:
    """The soft label of a pair: its `confidence` (P(chosen truly ≻ rejected)); 1 when it has none."""
    c = record.get("confidence")
    return 1.0 if c is None else float(c)


def pair_loss(rm, processor, batch: list[dict], cfg: RewardConfig, device, image_cache: dict) -> tuple:
    """BT loss of one batch of records; chosen and rejected go through one forward pass."""
    n = len(batch)
    ims = [load_images(r["images"], image_cache) for r in batch]
    prompts = [r["prompt"] for r in batch]
    enc = encode_completions(processor, ims + ims, prompts + prompts,
                             [r["chosen"] for r in batch] + [r["rejected"] for r in batch]).to(device)
    rewards = rm(completion_mask=enc.completion_mask, **enc.inputs)  # (2n,)
    r_c, r_r = rewards[:n], rewards[n:]
    margin = None
    if cfg.margin_weight:
        m = torch.tensor([float(r.get("margin") or 1) for r in batch], device=rewards.device)
        margin = cfg.margin_weight * (m - 1).clamp(min=0)
    if cfg.confidence_weighting:
        c = torch.tensor([pair_confidence(r) for r in batch], device=rewards.device)
        loss = soft_bradley_terry_loss(r_c, r_r, c, margin)
    else:
        loss = bradley_terry_loss(r_c, r_r, margin)
    if cfg.center_weight:
        loss = loss + cfg.center_weight * reward_centering_loss(r_c, r_r)
    acc = (r_c > r_r).float().mean()
    return loss, acc, r_c.detach(), r_r.detach()


def make_optimizer(rm: RewardModel, cfg: RewardConfig) -> torch.optim.AdamW:
    """AdamW: the backbone (or adapter) at `lr`, the freshly initialised head and α at `head_lr`."""
    head = {id(p) for p in rm.head_parameters()}
    body = [p for p in rm.parameters() if p.requires_grad and id(p) not in head]
    groups = [{"params": body, "lr": cfg.lr}, {"params": rm.head_parameters(), "lr": cfg.head_lr or cfg.lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_reward_model(cfg: RewardConfig, run_dir: str) -> dict:
    """Train, evaluate and save a reward model; returns the result dict (also written to result.json)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    # A fully fine-tuned backbone has weights the reward never touches (lm_head, the vision pooler):
    # DDP must be told, or it waits for their gradients forever.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not cfg.model.lora)
    acc = Accelerator(cpu=cfg.model.device == "cpu" or not torch.cuda.is_available(), kwargs_handlers=[ddp])
    run = RunDir(run_dir, to_dict(cfg), is_main=acc.is_main_process)
    with run:
        result = _train(cfg, acc, run, set_seed)
        run.write_result(result)
        return result


def _train(cfg: RewardConfig, acc, run: RunDir, set_seed) -> dict:
    set_seed(cfg.seed)
    records = read_preferences(cfg.train_file)
    split = split_lines(records, read_preferences(cfg.eval_file) if cfg.eval_file else None,
                        train_file=cfg.train_file, eval_file=cfg.eval_file)
    train, held, prefix = split.train, split.measure, EVAL
    if not split.heldout:
        # Pairs split off by ranking are not trained on, but they rank the same prompts as the training
        # pairs do (other annotators, other tasks): not held out, so not eval/.
        train, held = split_by_ranking(split.train, cfg.eval_fraction, cfg.seed)
        prefix = "train_split/"
        warn_not_heldout(log, "no eval_file and no split=eval pairs",
                         f"accuracy is measured on {len(held)} pairs split off {cfg.train_file} by ranking_id "
                         "(not trained on, but ranking training prompts)", prefix)
    before_prefix = prefix[:-1] + "_before/"
    if not train:
        raise ValueError(f"{cfg.train_file}: no training pairs left after the eval split")
    with_confidence = check_confidences(train, cfg.train_file)
    if cfg.confidence_weighting and not with_confidence:
        log.warning("confidence_weighting is on but no training pair of %s carries a confidence: every pair "
                    "counts as certain (plain Bradley–Terry)", cfg.train_file)
    world = acc.num_processes
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must divide by the {world} processes; change batch_size")
    per_device = cfg.batch_size // world
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    log.info("reward model: %d train pairs, %d held-out, %d processes × %d pairs, %d steps",
             len(train), len(held), world, per_device, total)

    device = str(acc.device)
    rm, processor = init_reward_model(dataclasses.replace(cfg.model), cfg.seed, device=device,
                                      likelihood_term=cfg.likelihood_term, token_head=cfg.token_head)
    opt = make_optimizer(rm, cfg)
    adalora = Schedule(rm, total)  # AdaLoRA's rank budget (a no-op for other methods)
    params = [p for g in opt.param_groups for p in g["params"]]
    sched = warmup_cosine_schedule(opt, cfg.warmup_steps, total)
    loader = torch.utils.data.DataLoader(train, batch_size=per_device, shuffle=True, collate_fn=list,
                                         generator=torch.Generator().manual_seed(cfg.seed), drop_last=False)
    rm_ddp, opt, loader = acc.prepare(rm, opt, loader)
    image_cache: dict = {}

    before = evaluate_pairs(rm, processor, held, cfg.eval_batch_size, image_cache) if acc.is_main_process else {}
    if before:
        log.info("held-out before training: %s", before)
        run.log_metrics(0, total, **{f"{prefix}{k}": v for k, v in before.items()})

    step, pairs_seen, t0 = 0, 0, time.monotonic()
    bar = progress(total=total, desc="reward model", enabled=acc.is_main_process)
    rm_ddp.train()
    while step < total:
        for batch in loader:
            with acc.accumulate(rm_ddp):
                loss, bacc, r_c, r_r = pair_loss(rm_ddp, processor, batch, cfg, acc.device, image_cache)
                acc.backward(loss + adalora.penalty())
                acc.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                if acc.sync_gradients:
                    adalora.step()
                opt.zero_grad(set_to_none=True)
            step += 1
            pairs_seen += len(batch) * world
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                loss_g = acc.reduce(loss.detach(), "mean").item()
                acc_g = acc.reduce(bacc.detach(), "mean").item()
                elapsed = time.monotonic() - t0
                run.log_metrics(step, total, loss=loss_g, **{"train/accuracy": acc_g,
                                "train/reward_chosen": r_c.mean().item(), "train/reward_rejected": r_r.mean().item(),
                                "lr": sched.get_last_lr()[0], "charts/pairs_per_s": pairs_seen / elapsed})
            if step >= total:
                break
    bar.close()
    seconds = time.monotonic() - t0
    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(rm_ddp)
    result = {"steps": step, "train_pairs": len(train), "eval_pairs": len(held) if split.heldout else 0,
              "heldout": split.source, "processes": world, "confidence_weighting": cfg.confidence_weighting,
              "train_pairs_with_confidence": with_confidence,
              "train_seconds": round(seconds, 2), "pairs_per_second": round(pairs_seen / max(seconds, 1e-9), 2)}
    if acc.is_main_process:
        after = evaluate_pairs(unwrapped, processor, held, cfg.eval_batch_size, image_cache)
        if after:
            log.info("held-out after training: %s", after)
            run.log_metrics(step, total, **{f"{prefix}{k}": v for k, v in after.items()})
        result.update({f"{prefix}{k}": v for k, v in after.items()})
        result.update({f"{before_prefix}{k}": v for k, v in before.items()})
        with run.checkpoint() as tmp:
            save_reward_model(unwrapped, processor, cfg.model, tmp)
        result["checkpoint"] = str(run.checkpoint_path)
    acc.wait_for_everyone()
    return result
