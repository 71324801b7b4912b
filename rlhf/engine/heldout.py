"""The engine's held-out rule: which lines a run trains on, which it measures on, and what it calls them.

1. A file given as held-out (`eval_file`; `evaluate`'s prompt and preference files) is held out as a
   whole: its caller says so.
2. In a training file (`prompts_file`, `train_file`), lines marked `"split": "eval"` are never trained
   on; without an explicit held-out file they are the held-out set.
3. A metric is named `eval/…` only when it was measured on such held-out lines. Where a run has none,
   it measures on what it has and names the metric otherwise — `train/…` for training lines (the
   reward model: `train_split/…` for pairs split off its training file, not trained on but ranking
   training prompts) — and logs why. Never a silent fallback.

Every result says where its held-out figures came from (`heldout`: the source, or "none").
Stdlib only, like `config.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

EVAL = "eval/"
TRAIN = "train/"


@dataclass
class Split:
    """The lines a run trains on and the lines it measures on, and whether those are held out."""

    train: list[dict]
    measure: list[dict]
    source: str  # where `measure` comes from, for the result and the log; "none" when not held out

    @property
    def heldout(self) -> bool:
        return self.source != "none"

    @property
    def prefix(self) -> str:
        return EVAL if self.heldout else TRAIN


def split_lines(rows: list[dict], eval_rows: list[dict] | None, *, train_file: str, eval_file: str = "") -> Split:
    """Rule 1 and 2: lines marked split=eval are dropped from training; the held-out set is `eval_rows`
    (an explicit file) when given, else those marked lines. With neither, `measure` is empty and
    `source` "none": the caller decides what to measure on, and names it by `prefix`."""
    train = [r for r in rows if r.get("split") != "eval"]
    marked = [r for r in rows if r.get("split") == "eval"]
    if eval_rows is not None:
        return Split(train, eval_rows, f"eval_file {eval_file}")
    if marked:
        return Split(train, marked, f"{len(marked)} split=eval lines of {train_file}")
    return Split(train, [], "none")


def relabel(metrics: dict, prefix: str) -> dict:
    """`eval/…` keys renamed to `prefix…` (a metric measured on lines that are not held out)."""
    if prefix == EVAL:
        return dict(metrics)
    return {(prefix + k[len(EVAL):] if k.startswith(EVAL) else k): v for k, v in metrics.items()}


def warn_not_heldout(log: logging.Logger, what: str, why: str, prefix: str = TRAIN) -> None:
    """The log line of rule 3: what is measured on data that is not held out, why, and what it is called."""
    log.warning("%s: %s; these figures are not held out, so they are named %s… (not eval/…). Give an eval_file "
                "or mark held-out lines \"split\": \"eval\" to measure held-out figures", what, why, prefix)
