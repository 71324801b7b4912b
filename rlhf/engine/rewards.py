"""Verifiable rewards in the Visual-RFT manner (Liu et al. 2025, "Visual-RFT", §3.2): plain functions
scoring completions against ground truth, no learned model.

Every reward has TRL's reward-function signature `(prompts, completions, images=None, **kwargs) ->
list[float]`; `kwargs` carry per-completion columns such as `ground_truth` (a dict of the prompt's world)
and `reference` (a string or a list of strings). Completions may be plain strings or TRL's conversational
`[{"role": "assistant", "content": ...}]`. No torch here.

`REWARDS` is the registry a config's `verifiable_reward` names. This module holds the world-independent
parts (text normalisation, box IoU); a world's rewards register themselves from their own module
(the demo world's: `demo/rewards.py`, imported on the first lookup, see registry.py).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from .registry import Registry

RewardFn = Callable[..., list[float]]

# The demo world's rewards register themselves from demo/rewards.py, imported on the first lookup.
REWARDS: Registry[RewardFn] = Registry("verifiable reward", plugins=("rlhf.engine.demo.rewards",))
"""Name → reward function; `@REWARDS.register` adds one. Configs name rewards by these keys."""


def as_text(x) -> str:
    """A completion or prompt as plain text: a string, or TRL's conversational list of messages (the text
    parts of the last message)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        x = [x]
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        content = x[-1].get("content", "")
        if isinstance(content, str):
            return content
        return " ".join(part.get("text", "") for part in content if part.get("type") == "text")
    return str(x)


_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case word tokens of a text, punctuation dropped."""
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    """Lower case, words only, single spaces (for exact match)."""
    return " ".join(words(text))


def column(kwargs: dict, name: str, n: int) -> list:
    """The per-completion column `name` of a reward's keyword arguments, checked to have `n` entries."""
    col = kwargs.get(name)
    if col is None:
        raise ValueError(f"this reward needs the per-completion column {name!r} (got {sorted(kwargs)})")
    if len(col) != n:
        raise ValueError(f"column {name!r} has {len(col)} entries for {n} completions")
    return list(col)


def multiset_agreement(pred: list, truth: list) -> float:
    """|pred ∩ truth| / max(|pred|, |truth|) over multisets (1 when both are empty)."""
    if not pred and not truth:
        return 1.0
    overlap = sum((Counter(pred) & Counter(truth)).values())
    return overlap / max(len(pred), len(truth))


_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def parse_box(text: str) -> list[float] | None:
    """The first four numbers of a text as a box [x0, y0, x1, y1] (None when fewer than four)."""
    nums = [float(x) for x in _NUM.findall(text)]
    if len(nums) < 4:
        return None
    x0, y0, x1, y1 = nums[:4]
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def box_iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@REWARDS.register
def iou_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """IoU of the box stated in the completion with the target box (Visual-RFT's IoU reward).

    The target is `ground_truth["box"]` when present, else the best-matching box of
    `ground_truth["boxes"]` (or of its `objects`' boxes); an answer without a box scores 0."""
    gts = column(kwargs, "ground_truth", len(completions))
    out = []
    for c, gt in zip(completions, gts, strict=True):
        box = parse_box(as_text(c))
        targets = [gt["box"]] if "box" in gt else gt.get("boxes") or [o["box"] for o in gt.get("objects", [])]
        out.append(max((box_iou(box, t) for t in targets), default=0.0) if box else 0.0)
    return out

