"""The demo world's verifiable rewards and answer metrics, registered in the library's registries
(`rewards.REWARDS`, `evaluation.ANSWER_METRICS`) when this module is imported; registry.py imports it on
the first lookup, so configs name these rewards ("demo_reward", "caption_reward", …) as before.

Ground truth is a scene of world.py (`objects`, `count`, `boxes`, …; a grounding prompt's also `box`). Pure Python, no torch: the web
tier's simulated annotators rank by `demo_reward`.
"""

from __future__ import annotations

from ..evaluation import ANSWER_METRICS, word_accuracy
from ..rewards import (
    REWARDS,
    as_text,
    column,
    detection_f1_reward,
    detection_reward,
    iou_reward,
    multiset_agreement,
    normalize,
    parse_boxes,
    words,
)
from . import world


def caption_attributes(text: str, gt: dict) -> dict[str, float]:
    """Per-attribute correctness of a caption against the ground truth, each in [0, 1]:
    count (the stated count word), color, shape, size (multiset agreement of the described objects),
    object (agreement of whole (size, colour, shape) triples)."""
    parsed = world.parse_caption(text)
    objs = parsed["objects"]
    truth = [(o["size"], o["color"], o["shape"]) for o in gt["objects"]]
    return {
        "count": float(parsed["count"] == gt["count"]),
        "color": multiset_agreement([o[1] for o in objs], [t[1] for t in truth]),
        "shape": multiset_agreement([o[2] for o in objs], [t[2] for t in truth]),
        "size": multiset_agreement([o[0] for o in objs], [t[0] for t in truth]),
        "object": multiset_agreement(objs, truth),
    }


def is_caption_prompt(prompt: str) -> bool:
    return normalize(world.CAPTION_PROMPT) in normalize(prompt)


_GROUNDING_HEAD = normalize(world.GROUNDING_TEMPLATE.split("{")[0])


def prompt_kind(prompt: str) -> str:
    """Which of the world's tasks a prompt is: "caption", "grounding" ("Where is the red circle?"),
    "detection" ("Find every shape.") or "vqa" (any other question)."""
    q = normalize(as_text(prompt))
    if normalize(world.CAPTION_PROMPT) in q:
        return "caption"
    if q.startswith(_GROUNDING_HEAD):
        return "grounding"
    if normalize(world.DETECTION_PROMPT) in q:
        return "detection"
    return "vqa"


@REWARDS.register
def caption_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """Mean of count, colour and shape correctness of each caption against `ground_truth`."""
    gts = column(kwargs, "ground_truth", len(completions))
    out = []
    for c, gt in zip(completions, gts, strict=True):
        a = caption_attributes(as_text(c), gt)
        out.append((a["count"] + a["color"] + a["shape"]) / 3)
    return out


def _attribute_reward(attr: str):
    def reward(prompts, completions, images=None, **kwargs) -> list[float]:
        gts = column(kwargs, "ground_truth", len(completions))
        return [caption_attributes(as_text(c), gt)[attr] for c, gt in zip(completions, gts, strict=True)]

    reward.__name__ = f"{attr}_reward"
    reward.__doc__ = f"Caption {attr} correctness against `ground_truth`, in [0, 1]."
    return REWARDS.register(reward)


count_reward = _attribute_reward("count")
color_reward = _attribute_reward("color")
shape_reward = _attribute_reward("shape")


def _references(kwargs: dict, prompts, n: int) -> list[list[str]]:
    """References per completion: the `reference` column, else answers derived from `ground_truth`."""
    if kwargs.get("reference") is not None:
        refs = column(kwargs, "reference", n)
        return [[r] if isinstance(r, str) else list(r) for r in refs]
    gts = column(kwargs, "ground_truth", n)
    out = []
    for p, gt in zip(prompts, gts, strict=True):
        q = as_text(p)
        out.append([world.reference_caption(gt)] if is_caption_prompt(q) else [world.answer_question(gt, q)])
    return out


@REWARDS.register
def exact_match_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """1 when the normalised completion equals a normalised reference (VQA exact match), else 0. Without a
    `reference` column the references are the demo world's answers from `ground_truth`."""
    refs = _references(kwargs, prompts, len(completions))
    return [float(any(normalize(as_text(c)) == normalize(r) for r in rs)) for c, rs in zip(completions, refs,
                                                                                          strict=True)]


vqa_exact_match_reward = exact_match_reward


@REWARDS.register
def format_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """1 when an answer has the expected form: a caption prompt needs a well-formed caption of the demo
    grammar ("two shapes: a small red circle and a large blue square."), a grounding prompt exactly one box
    and a detection prompt at least one (the box format of rewards.parse_boxes); any other prompt a short
    answer of one to four words."""
    out = []
    for p, c in zip(prompts, completions, strict=True):
        text = as_text(c).strip()
        kind = prompt_kind(p)
        if kind == "caption":
            out.append(float(world.is_well_formed_caption(text)))
        elif kind in ("grounding", "detection"):
            boxes = parse_boxes(text)
            out.append(float(len(boxes) == 1 if kind == "grounding" else bool(boxes)))
        else:
            out.append(float(1 <= len(words(text)) <= 4))
    return out


@REWARDS.register
def demo_reward(prompts, completions, images=None, **kwargs) -> list[float]:
    """The demo world's overall correctness: caption_reward for caption prompts, iou_reward for grounding
    prompts, detection_reward for detection prompts, exact match for questions. The simulated annotators and
    the benchmarks rank by it."""
    gts = column(kwargs, "ground_truth", len(completions))
    by_kind = {"caption": caption_reward, "grounding": iou_reward, "detection": detection_reward}
    out = []
    for p, c, gt in zip(prompts, completions, gts, strict=True):
        q = as_text(p)
        kind = prompt_kind(q)
        if kind in by_kind:
            out.append(by_kind[kind]([q], [c], ground_truth=[gt])[0])
        else:
            out.append(float(normalize(as_text(c)) == normalize(world.answer_question(gt, q))))
    return out


@ANSWER_METRICS.register(name="demo")
def demo_answer_metrics(records: list[dict], answers: list[str]) -> dict[str, float]:
    """Demo-world figures of `evaluate` on the records with ground truth: caption attribute accuracy
    (caption/count, …/color, …/shape, …/size, …/object), word accuracy, exact match and well-formedness
    against the reference caption; vqa/exact_match against the world's answer to each question;
    grounding/iou (mean IoU) and grounding/acc@0.5 (share with IoU at least 0.5); detection/soft_f1 and
    detection/f1@0.5."""
    out: dict[str, float] = {}
    for kind, figures in (("grounding", {"iou": iou_reward}),
                          ("detection", {"soft_f1": detection_reward, "f1@0.5": detection_f1_reward})):
        rows = [(r, a) for r, a in zip(records, answers, strict=True)
                if r.get("ground_truth") and prompt_kind(r["prompt"]) == kind]
        if not rows:
            continue
        for name, fn in figures.items():
            scores = fn([r["prompt"] for r, _ in rows], [a for _, a in rows], ground_truth=[r["ground_truth"] for r, _ in rows])
            out[f"{kind}/{name}"] = sum(scores) / len(scores)
            if name == "iou":
                out[f"{kind}/acc@0.5"] = sum(s >= 0.5 for s in scores) / len(scores)
    captions = [(r, a) for r, a in zip(records, answers, strict=True)
                if r.get("ground_truth") and normalize(r["prompt"]) == normalize(world.CAPTION_PROMPT)]
    if captions:
        attrs = [caption_attributes(a, r["ground_truth"]) for r, a in captions]
        for key in ("count", "color", "shape", "size", "object"):
            out[f"caption/{key}"] = sum(x[key] for x in attrs) / len(attrs)
        out["caption/word_accuracy"] = sum(word_accuracy(a, world.reference_caption(r["ground_truth"]))
                                           for r, a in captions) / len(captions)
        out["caption/exact_match"] = sum(normalize(a) == normalize(world.reference_caption(r["ground_truth"]))
                                         for r, a in captions) / len(captions)
        out["caption/well_formed"] = sum(world.is_well_formed_caption(a) for _, a in captions) / len(captions)
    questions = [(r, a) for r, a in zip(records, answers, strict=True)
                 if r.get("ground_truth") and prompt_kind(r["prompt"]) == "vqa"]
    if questions:
        hits = []
        for r, a in questions:
            try:
                hits.append(normalize(a) == normalize(world.answer_question(r["ground_truth"], r["prompt"])))
            except ValueError:  # not a demo-world question
                continue
        if hits:
            out["vqa/exact_match"] = sum(hits) / len(hits)
    return out
