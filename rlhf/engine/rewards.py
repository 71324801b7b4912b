"""Verifiable rewards in the Visual-RFT manner (Liu et al. 2025, "Visual-RFT", §3.2): plain functions
scoring completions against ground truth, no learned model.

Every reward has TRL's reward-function signature `(prompts, completions, images=None, **kwargs) ->
list[float]`; `kwargs` carry per-completion columns such as `ground_truth` (a dict of the prompt's world)
and `reference` (a string or a list of strings). Completions may be plain strings or TRL's conversational
`[{"role": "assistant", "content": ...}]`. No torch here.

`REWARDS` is the registry a config's `verifiable_reward` names. This module holds the world-independent
parts (text normalisation; the box answer format, box IoU and the grounding and detection rewards); a world's
rewards register themselves from their own module (the demo world's: `demo/rewards.py`, imported on the first
lookup, see registry.py).
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


# ASCII digits only, as in JavaScript (static/js/boxes.js): "١٢" is no number in either.
_NUM = re.compile(r"-?\d+(?:\.\d+)?", re.ASCII)
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?\Z", re.ASCII)
_LABEL_CUT = re.compile(r".*[;\n]")  # a label starts after the last ';' or line break before its box

Box = list[float]


def _bracket_box(inside: str) -> Box | None:
    """The box in the text between a '[' and its ']', or None.

    Four comma-separated numbers, spaces inside a number ignored: a word-level tokenizer that spells digits
    apart (the demo model's writes `[ 1 2, 4 0, 5 0, 8 0 ]`) still states [12, 40, 50, 80]. Without commas,
    exactly four space-separated numbers."""
    fields = inside.split(",")
    if len(fields) != 4:
        fields = inside.split()
    else:
        fields = ["".join(f.split()) for f in fields]
    if len(fields) != 4 or not all(_NUMBER.match(f) for f in fields):
        return None
    return _ordered([float(f) for f in fields])


def _ordered(nums: list[float]) -> Box:
    x0, y0, x1, y1 = nums
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def parse_boxes(text: str) -> list[tuple[str, Box]]:
    """Every box an answer states, as `(label, [x0, y0, x1, y1])`, in order — THE box format (docs/import-export.md,
    "Box answers"; static/js/boxes.js reads it the same way and tests/engine/box_examples.json holds both to it).

    A box is `[x0, y0, x1, y1]` in pixels of the original image (x right, y down; corners in either order);
    its label is the text before it back to the previous box, `;` or line break, lower-cased, with
    separators trimmed ("" when none): `circle [10, 10, 40, 40]; red square [50, 60, 90, 100]`. An answer
    without any bracketed box falls back to its first four numbers ("60 60 100 80"), label "". Anything
    else — no box, three numbers, words in the brackets — is no box: an empty list, never an exception."""
    text = as_text(text)
    out: list[tuple[str, Box]] = []
    last = 0
    for m in _BRACKET.finditer(text):
        box = _bracket_box(m.group(1))
        if box is None:
            continue
        label = _LABEL_CUT.sub("", text[last : m.start()])
        out.append((" ".join(label.lower().strip(" \t,.:;-").split()), box))
        last = m.end()
    if not out and "[" not in text:
        nums = [float(x) for x in _NUM.findall(text)]
        if len(nums) >= 4:
            out.append(("", _ordered(nums[:4])))
    return out


def parse_box(text: str) -> Box | None:
    """The first box an answer states (`parse_boxes`), or None."""
    boxes = parse_boxes(text)
    return boxes[0][1] if boxes else None


def format_box(box: Box) -> str:
    """A box as the answer format writes it: `[x0, y0, x1, y1]`, whole pixels without a decimal point."""
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def target_boxes(gt, i: int = 0) -> list[tuple[str, Box]]:
    """The ground-truth boxes of one completion as `(label, box)`: `ground_truth["box"]` when present (a
    grounding target), else `ground_truth["boxes"]` with `ground_truth["labels"]` beside them, else the boxes of
    its `objects`. A malformed box raises ValueError naming the field and the completion's index: bad ground
    truth is the data's fault, unlike a bad answer, which scores 0."""
    if not isinstance(gt, dict):
        raise ValueError(f"ground_truth[{i}] must be an object with 'box' or 'boxes', not {type(gt).__name__}")
    if "box" in gt:
        pairs, field = [("", gt["box"])], "box"
    elif "boxes" in gt:
        labels = gt.get("labels") or []
        pairs = [(labels[j] if j < len(labels) else "", b) for j, b in enumerate(gt["boxes"] or [])]
        field = "boxes"
    else:
        pairs = [(" ".join(str(o.get(k, "")) for k in ("color", "shape")).strip(), o.get("box"))
                 for o in gt.get("objects") or []]
        field = "objects[].box"
    out = []
    for j, (label, box) in enumerate(pairs):
        if not (isinstance(box, list | tuple) and len(box) == 4
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)):
            raise ValueError(f"ground_truth[{i}].{field} entry {j} is not [x0, y0, x1, y1] numbers: {box!r}")
        out.append((str(label).lower(), _ordered([float(v) for v in box])))
    return out


_LABEL_FILLER = frozenset({"a", "an", "the", "and", "is", "at", "in"})


def labels_agree(answer: str, truth: str) -> bool:
    """An answer's label fits a true one when all its words (fillers such as "and", "the" aside) are among the
    truth's: "circle" and "and a red circle" fit "small red circle"; an answer without a label fits any box."""
    return set(words(answer)) - _LABEL_FILLER <= set(words(truth))


def match_boxes(pred: list[tuple[str, Box]], truth: list[tuple[str, Box]]) -> list[float]:
    """IoUs of a greedy one-to-one matching, best pair first, of stated to true boxes with agreeing labels
    (the matching of COCO-style detection evaluation, Lin et al. 2014, without the score ranking)."""
    cand = sorted(((box_iou(p, t), i, j) for i, (pl, p) in enumerate(pred) for j, (tl, t) in enumerate(truth)
                   if labels_agree(pl, tl)), reverse=True)
    used_p, used_t, ious = set(), set(), []
    for iou, i, j in cand:
        if iou <= 0 or i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        ious.append(iou)
    return ious


@REWARDS.register
def iou_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """IoU of the box stated in the completion with the target box (Visual-RFT's IoU reward).

    The target is `ground_truth["box"]` when present, else the best-matching box of
    `ground_truth["boxes"]` (or of its `objects`' boxes); an answer without a box scores 0."""
    gts = column(kwargs, "ground_truth", len(completions))
    out = []
    for i, (c, gt) in enumerate(zip(completions, gts, strict=True)):
        targets = target_boxes(gt, i)
        box = parse_box(as_text(c))
        out.append(max((box_iou(box, t) for _, t in targets), default=0.0) if box else 0.0)
    return out


def _detection_scores(completions, kwargs: dict, score: Callable[[list[float], int, int], float]) -> list[float]:
    """`score(matched IoUs, stated boxes, true boxes)` of each completion against its `ground_truth` boxes; 1
    when there is nothing to find and nothing is stated."""
    gts = column(kwargs, "ground_truth", len(completions))
    out = []
    for i, (c, gt) in enumerate(zip(completions, gts, strict=True)):
        truth, pred = target_boxes(gt, i), parse_boxes(as_text(c))
        out.append(score(match_boxes(pred, truth), len(pred), len(truth)) if truth or pred else 1.0)
    return out


@REWARDS.register
def detection_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """Soft F1 of a detection answer: the IoUs of a one-to-one matching of its boxes to the true ones (labels
    agreeing), summed and divided by the larger of the two counts — 1 only for every box right and nothing
    extra; a missing or an extra box costs as much as a wrong one. No box: 0 (1 when there is nothing to find)."""
    return _detection_scores(completions, kwargs, lambda ious, n_pred, n_true: sum(ious) / max(n_pred, n_true))


@REWARDS.register
def detection_f1_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """F1 at IoU 0.5 of a detection answer (a matched box counts when its IoU is at least 0.5, PASCAL VOC's
    threshold): 2·hits / (stated + true). Coarser than detection_reward; the usual detection figure."""
    return _detection_scores(completions, kwargs,
                             lambda ious, n_pred, n_true: 2 * sum(iou >= 0.5 for iou in ious) / (n_pred + n_true))
