"""Intervals for the figures that compare model versions: a mean with its bootstrap interval, the paired
difference of two versions on the same prompts, and Wilson's interval of a proportion.

Stdlib only (no torch): the Django side reads these too, to show figures and to decide the promotion
gate. Every function is deterministic for a given seed.

- Percentile bootstrap (Efron & Tibshirani 1993, ch. 13): resample the n values with replacement, take
  the mean each time; the 2.5th and 97.5th percentiles of those means bound the 95% interval. Used for
  means of scores in [0, 1] or of reward-model scores, which are not proportions.
- Paired difference: the bootstrap of the per-prompt differences new − old on the same prompts, which
  cancels the prompts' own difficulty (far narrower than comparing two independent intervals).
- Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the normal
  approximation for small n or p near 0 or 1): for k successes in n trials,
  (p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959963984540054


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def bootstrap_mean(values: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """``{"mean", "low", "high", "n"}``: the mean of ``values`` and its percentile-bootstrap interval."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    m = mean(values)
    if n == 1 or all(v == values[0] for v in values):
        return {"mean": m, "low": m, "high": m, "n": n}
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[math.floor(tail * (resamples - 1))]
    high = means[math.ceil((1 - tail) * (resamples - 1))]
    return {"mean": m, "low": low, "high": high, "n": n}


def paired_difference(new: Sequence[float], old: Sequence[float], **kwargs) -> dict:
    """Mean of new[i] − old[i] over the same items, with its bootstrap interval (``bootstrap_mean``)."""
    if len(new) != len(old):
        raise ValueError(f"paired values differ in length: {len(new)} new, {len(old)} old")
    return bootstrap_mean([a - b for a, b in zip(new, old, strict=True)], **kwargs)


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's 95% interval of a proportion (``successes`` may count ties as halves)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)
