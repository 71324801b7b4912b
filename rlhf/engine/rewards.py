"""Verifiable rewards in the Visual-RFT manner (Liu et al. 2025, "Visual-RFT", §3.2): plain functions
scoring completions against ground truth, no learned model.

Every reward has TRL's reward-function signature `(prompts, completions, images=None, **kwargs) ->
list[float]`; `kwargs` carry per-completion columns such as `ground_truth` (dicts of the demo world:
`objects`, `count`, `boxes`, …) and `reference` (a string or a list of strings). Completions may be plain
strings or TRL's conversational `[{"role": "assistant", "content": ...}]`. No torch here.
"""

from __future__ import annotations

import re
from collections import Counter

from .demo import world


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


def normalize(text: str) -> str:
    """Lower case, words only, single spaces (for exact match)."""
    return " ".join(world.words(text))


def _column(kwargs: dict, name: str, n: int) -> list:
    col = kwargs.get(name)
    if col is None:
        raise ValueError(f"this reward needs the per-completion column {name!r} (got {sorted(kwargs)})")
    if len(col) != n:
        raise ValueError(f"column {name!r} has {len(col)} entries for {n} completions")
    return list(col)


def _multiset_agreement(pred: list, truth: list) -> float:
    """|pred ∩ truth| / max(|pred|, |truth|) over multisets (1 when both are empty)."""
    if not pred and not truth:
        return 1.0
    overlap = sum((Counter(pred) & Counter(truth)).values())
    return overlap / max(len(pred), len(truth))


def caption_attributes(text: str, gt: dict) -> dict[str, float]:
    """Per-attribute correctness of a caption against the ground truth, each in [0, 1]:
    count (the stated count word), color, shape, size (multiset agreement of the described objects),
    object (agreement of whole (size, colour, shape) triples)."""
    parsed = world.parse_caption(text)
    objs = parsed["objects"]
    truth = [(o["size"], o["color"], o["shape"]) for o in gt["objects"]]
    return {
        "count": float(parsed["count"] == gt["count"]),
        "color": _multiset_agreement([o[1] for o in objs], [t[1] for t in truth]),
        "shape": _multiset_agreement([o[2] for o in objs], [t[2] for t in truth]),
        "size": _multiset_agreement([o[0] for o in objs], [t[0] for t in truth]),
        "object": _multiset_agreement(objs, truth),
    }


def caption_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """Mean of count, colour and shape correctness of each caption against `ground_truth`."""
    gts = _column(kwargs, "ground_truth", len(completions))
    out = []
    for c, gt in zip(completions, gts, strict=True):
        a = caption_attributes(as_text(c), gt)
        out.append((a["count"] + a["color"] + a["shape"]) / 3)
    return out


def _attribute_reward(attr: str):
    def reward(prompts, completions, images=None, **kwargs) -> list[float]:
        gts = _column(kwargs, "ground_truth", len(completions))
        return [caption_attributes(as_text(c), gt)[attr] for c, gt in zip(completions, gts, strict=True)]

    reward.__name__ = f"{attr}_reward"
    reward.__doc__ = f"Caption {attr} correctness against `ground_truth`, in [0, 1]."
    return reward


count_reward = _attribute_reward("count")
color_reward = _attribute_reward("color")
shape_reward = _attribute_reward("shape")


def _references(kwargs: dict, prompts, n: int) -> list[list[str]]:
    """References per completion: the `reference` column, else answers derived from `ground_truth`."""
    if kwargs.get("reference") is not None:
        refs = _column(kwargs, "reference", n)
        return [[r] if isinstance(r, str) else list(r) for r in refs]
    gts = _column(kwargs, "ground_truth", n)
    out = []
    for p, gt in zip(prompts, gts, strict=True):
        q = as_text(p)
        out.append([world.reference_caption(gt)] if _is_caption_prompt(q) else [world.answer_question(gt, q)])
    return out


def _is_caption_prompt(prompt: str) -> bool:
    return normalize(world.CAPTION_PROMPT) in normalize(prompt)


def exact_match_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """1 when the normalised completion equals a normalised reference (VQA exact match), else 0."""
    refs = _references(kwargs, prompts, len(completions))
    return [float(any(normalize(as_text(c)) == normalize(r) for r in rs)) for c, rs in zip(completions, refs,
                                                                                          strict=True)]


vqa_exact_match_reward = exact_match_reward


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


def iou_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """IoU of the box stated in the completion with the target box (Visual-RFT's IoU reward).

    The target is `ground_truth["box"]` when present, else the best-matching box of
    `ground_truth["boxes"]`; an answer without a box scores 0."""
    gts = _column(kwargs, "ground_truth", len(completions))
    out = []
    for c, gt in zip(completions, gts, strict=True):
        box = parse_box(as_text(c))
        targets = [gt["box"]] if "box" in gt else gt.get("boxes") or [o["box"] for o in gt.get("objects", [])]
        out.append(max((box_iou(box, t) for t in targets), default=0.0) if box else 0.0)
    return out


def format_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """1 when an answer has the expected form: a caption prompt needs a well-formed caption of the demo
    grammar ("two shapes: a small red circle and a large blue square."); any other prompt a short
    answer of one to four words."""
    out = []
    for p, c in zip(prompts, completions, strict=True):
        text = as_text(c).strip()
        if _is_caption_prompt(as_text(p)):
            out.append(float(world.is_well_formed_caption(text)))
        else:
            out.append(float(1 <= len(world.words(text)) <= 4))
    return out


def demo_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """The demo world's overall correctness: caption_reward for caption prompts, exact match for
    questions. The simulated annotators and the benchmarks rank by it."""
    gts = _column(kwargs, "ground_truth", len(completions))
    out = []
    for p, c, gt in zip(prompts, completions, gts, strict=True):
        q = as_text(p)
        if _is_caption_prompt(q):
            out.append(caption_reward([q], [c], ground_truth=[gt])[0])
        else:
            out.append(float(normalize(as_text(c)) == normalize(world.answer_question(gt, q))))
    return out


REWARDS = {f.__name__: f for f in (caption_reward, count_reward, color_reward, shape_reward, exact_match_reward,
                                   iou_reward, format_reward, demo_reward)}
