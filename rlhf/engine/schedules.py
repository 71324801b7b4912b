"""Learning-rate schedules of the engine's supervised loops: `sft`, `train-reward` and the demo build.

Not transformers' `get_cosine_schedule_with_warmup` (nor `get_cosine_with_min_lr_schedule_with_warmup`,
which has the floor): its warm-up multiplier is step / warmup, so the first optimiser step runs at
learning rate 0, and its cosine starts one step earlier than ours; no choice of its arguments gives the
multipliers below. Those multipliers made the shipped demo base (rlhf/engine/demo/base) and the tests'
tiny demo (tests/assets/tiny-demo), and the demo build's cache key (demo/shipped.py, `config_hash`) names a
model by its config alone: a schedule shifted by one step would give a different model under the same key.
So the schedule stays ours, in this one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def cosine_with_warmup(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """LR multiplier of step 0, 1, …: linear warm-up to 1 over `warmup` steps ((step + 1) / warmup, so the
    first step already learns), then cosine decay to `floor` at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler of `cosine_with_warmup` on `optimizer` (step it once per optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup, total))
