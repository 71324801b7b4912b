"""The demo "shapes" world: synthetic scenes with complete ground truth.

Every image holds 1–3 shapes (circle, square, triangle, diamond) in one of five colours and two sizes,
drawn with Pillow at random, non-overlapping positions. The ground truth (labels, count, colours, sizes,
boxes) makes every answer verifiable, which is what the demo's simulated annotators, the verifiable
rewards and the benchmarks rely on.

Pure Python (Pillow, stdlib and the engine's torch-free rewards.py): the Django web tier imports this
module and must never pay for torch.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from PIL import Image, ImageDraw

from ..rewards import format_box, words  # the library's word tokens (world.words is this function)

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 170),
}
SIZES = {"small": 0.22, "large": 0.38}  # side of the bounding box as a fraction of the image side
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five")
MAX_OBJECTS = 3
IMAGE_SIZE = 128
BACKGROUND = (245, 245, 240)

CAPTION_PROMPT = "Describe the image."
QUESTION_TEMPLATES = {
    "count": "How many shapes are there?",
    "color": "What color is the {shape}?",
    "shape": "What shape is the {color} object?",
    "exists": "Is there a {color} {shape}?",
    "position": "Is the {color} {shape} on the left or the right?",
}
GROUNDING_TEMPLATE = "Where is the {color} {shape}?"
DETECTION_PROMPT = "Find every shape."
TASK_TYPES = ("caption", "vqa", "grounding", "detection")


def _free_box(rng: random.Random, side: int, taken: list[list[int]], image_size: int) -> list[int] | None:
    """A random box of the given side that does not overlap the boxes already taken (or None)."""
    for _ in range(50):
        x0 = rng.randint(2, image_size - side - 2)
        y0 = rng.randint(2, image_size - side - 2)
        box = [x0, y0, x0 + side, y0 + side]
        if all(box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3] for t in taken):
            return box
    return None


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: list[int], rgb: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "diamond":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def make_scene(rng: random.Random, image_size: int = IMAGE_SIZE) -> tuple[Image.Image, dict]:
    """Draw one scene; return the RGB image and its JSON-serialisable ground truth.

    Objects in the ground truth are ordered left to right (by box centre), the order captions use.
    Boxes are `[x0, y0, x1, y1]` in pixels of the returned image.
    """
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    objects: list[dict] = []
    for _ in range(rng.randint(1, MAX_OBJECTS)):
        size = rng.choice(list(SIZES))
        side = int(SIZES[size] * image_size)
        box = _free_box(rng, side, [o["box"] for o in objects], image_size)
        if box is None:
            continue
        obj = {"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)), "size": size, "box": box}
        objects.append(obj)
    objects.sort(key=lambda o: o["box"][0] + o["box"][2])
    for obj in objects:
        _draw(draw, obj["shape"], obj["box"], COLORS[obj["color"]])
    labels = [f"{o['size']} {o['color']} {o['shape']}" for o in objects]
    gt = {
        "objects": objects,
        "count": len(objects),
        "labels": labels,
        "colors": [o["color"] for o in objects],
        "shapes": [o["shape"] for o in objects],
        "boxes": [o["box"] for o in objects],
        "image_size": image_size,
    }
    return image, gt


def caption_from_objects(objects: list[tuple[str, str, str]]) -> str:
    """Caption in the world's grammar from `(size, color, shape)` triples, e.g.
    "two shapes: a small red circle and a large blue square."."""
    n = len(objects)
    head = f"{COUNT_WORDS[n]} shape{'s' if n != 1 else ''}:"
    parts = [f"a {size} {color} {shape}" for size, color, shape in objects]
    if n <= 1:
        body = "".join(parts)
    else:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{head} {body}."


def reference_caption(gt: dict) -> str:
    """The canonical correct caption of a scene."""
    return caption_from_objects([(o["size"], o["color"], o["shape"]) for o in gt["objects"]])


def _unique(gt: dict, key: str) -> list[dict]:
    values = [o[key] for o in gt["objects"]]
    return [o for o in gt["objects"] if values.count(o[key]) == 1]


def vqa_pairs(gt: dict, rng: random.Random) -> list[tuple[str, str]]:
    """Questions with unambiguous one-word answers about the scene: count, colour, shape, existence,
    position. At least the count question is always present."""
    pairs = [(QUESTION_TEMPLATES["count"], COUNT_WORDS[gt["count"]])]
    by_shape, by_color = _unique(gt, "shape"), _unique(gt, "color")
    if by_shape:
        o = rng.choice(by_shape)
        pairs.append((QUESTION_TEMPLATES["color"].format(shape=o["shape"]), o["color"]))
    if by_color:
        o = rng.choice(by_color)
        pairs.append((QUESTION_TEMPLATES["shape"].format(color=o["color"]), o["shape"]))
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    present = any(o["color"] == color and o["shape"] == shape for o in gt["objects"])
    if rng.random() < 0.5 and not present:  # balance yes/no answers
        o = rng.choice(gt["objects"])
        color, shape, present = o["color"], o["shape"], True
    pairs.append((QUESTION_TEMPLATES["exists"].format(color=color, shape=shape), "yes" if present else "no"))
    pairs_objs = [(o["color"], o["shape"]) for o in gt["objects"]]
    for o in gt["objects"]:
        if pairs_objs.count((o["color"], o["shape"])) == 1 and gt["count"] > 1:
            centre = (o["box"][0] + o["box"][2]) / 2
            side = "left" if centre < gt["image_size"] / 2 else "right"
            pairs.append((QUESTION_TEMPLATES["position"].format(color=o["color"], shape=o["shape"]), side))
            break
    return pairs


def grounding_targets(gt: dict) -> list[dict]:
    """The objects a referring expression "the {color} {shape}" names unambiguously (no other object
    shares both), in scene order."""
    pairs = [(o["color"], o["shape"]) for o in gt["objects"]]
    return [o for o in gt["objects"] if pairs.count((o["color"], o["shape"])) == 1]


def grounding_prompt(gt: dict, rng: random.Random) -> tuple[str, dict]:
    """A referring expression about one object of the scene and the ground truth of that prompt: the scene
    with `box` set to the object's box (what `iou_reward` scores against) and `target` naming it."""
    o = rng.choice(grounding_targets(gt))
    return (GROUNDING_TEMPLATE.format(color=o["color"], shape=o["shape"]),
            {**gt, "box": o["box"], "target": f"{o['color']} {o['shape']}"})


def detection_answer(gt: dict) -> str:
    """The correct detection answer of a scene: each object's colour and shape, then its box, `; ` between."""
    return "; ".join(f"{o['color']} {o['shape']} {format_box(o['box'])}" for o in gt["objects"])


# ---------------------------------------------------------------------------------------------------
# Parsing answers back into attributes (used by the verifiable rewards)

def parse_caption(text: str) -> dict:
    """Read a caption in the world's grammar back into `{"count": int | None, "objects": [(size, color,
    shape)]}`. Tolerant: an object is any shape word, with the closest preceding size and colour words
    since the previous object (None when absent)."""
    ws = words(text)
    count = None
    for w in ws:
        if w in COUNT_WORDS:
            count = COUNT_WORDS.index(w)
            break
        if w.isdigit():
            count = int(w)
            break
    objects, size, color = [], None, None
    for w in ws:
        if w in SIZES:
            size = w
        elif w in COLORS:
            color = w
        elif w.rstrip("s") in SHAPES and w not in ("shapes",):
            objects.append((size, color, w.rstrip("s")))
            size, color = None, None
    return {"count": count, "objects": objects}


_CAPTION_RE = re.compile(
    r"^(one|two|three) shapes?: a (small|large) \w+ \w+((, a (small|large) \w+ \w+)* and a (small|large) \w+ \w+)?\.$"
)


def is_well_formed_caption(text: str) -> bool:
    """True when the caption follows the world's grammar and its count word matches its object list."""
    text = " ".join(text.strip().lower().split())
    if not _CAPTION_RE.match(text):
        return False
    parsed = parse_caption(text)
    return parsed["count"] == len(parsed["objects"]) and all(all(o) for o in parsed["objects"])


# ---------------------------------------------------------------------------------------------------
# Seeding candidates and manifests before any model exists


def _perturb_caption(gt: dict, rng: random.Random) -> str:
    """A plausible caption with one or two attributes wrong (count, colour, shape or size)."""
    objs = [[o["size"], o["color"], o["shape"]] for o in gt["objects"]]
    for _ in range(rng.choice((1, 1, 2))):
        kind = rng.choice(("count", "color", "shape", "size"))
        i = rng.randrange(len(objs))
        if kind == "count":
            if len(objs) > 1 and rng.random() < 0.5:
                objs.pop(i)
            elif len(objs) < MAX_OBJECTS:
                objs.append([rng.choice(list(SIZES)), rng.choice(list(COLORS)), rng.choice(SHAPES)])
            else:
                objs.pop(i)
        elif kind == "color":
            objs[i][1] = rng.choice([c for c in COLORS if c != objs[i][1]])
        elif kind == "shape":
            objs[i][2] = rng.choice([s for s in SHAPES if s != objs[i][2]])
        else:
            objs[i][0] = "large" if objs[i][0] == "small" else "small"
    return caption_from_objects([tuple(o) for o in objs])


def _wrong_answers(answer: str) -> list[str]:
    for vocab in (COUNT_WORDS[1 : MAX_OBJECTS + 1], tuple(COLORS), SHAPES, ("yes", "no"), ("left", "right")):
        if answer in vocab:
            return [v for v in vocab if v != answer]
    return []


def demo_candidates(
    gt: dict, k: int, rng: random.Random, task: str = "caption", question: str | None = None
) -> list[str]:
    """k distinct plausible answers of varying correctness; the correct one is included with
    probability 0.8 (caption) or whenever the question's answer space allows it (VQA).

    For VQA pass the `question`; its correct answer is looked up from the ground truth."""
    if k < 1:
        raise ValueError("k must be at least 1")
    if task == "caption":
        correct = reference_caption(gt)
        out = [correct] if rng.random() < 0.8 else []
        for _ in range(200):
            if len(out) >= k:
                break
            cand = _perturb_caption(gt, rng)
            if cand not in out and (cand != correct or not out):
                out.append(cand)
        if len(out) < k:
            raise ValueError(f"could not make {k} distinct captions for this scene")
        rng.shuffle(out)
        return out[:k]
    if task == "grounding":
        return _box_candidates(gt, k, rng)
    if task == "detection":
        return _detection_candidates(gt, k, rng)
    if task != "vqa":
        raise ValueError(f"task must be one of {', '.join(TASK_TYPES)}, not {task!r}")
    answers = dict(vqa_pairs(gt, random.Random(0)))
    if question is None:
        question = QUESTION_TEMPLATES["count"]
    correct = answers.get(question)
    if correct is None:
        correct = answer_question(gt, question)
    pool = [correct, *_wrong_answers(correct)]
    extras = [f"{correct}.", f"it is {correct}", f"maybe {correct}", "i do not know"]
    pool += [e for e in extras if e not in pool]
    head, rest = pool[:1], pool[1:]
    rng.shuffle(rest)
    out = (head + rest)[:k]
    if len(out) < k:
        raise ValueError(f"could not make {k} distinct answers for {question!r}")
    rng.shuffle(out)
    return out


def _jitter(box: list[int], rng: random.Random, size: int, amount: float) -> list[int]:
    """The box moved and resized by up to `amount` of its side, kept inside the image."""
    side = box[2] - box[0]
    d = [round(rng.uniform(-amount, amount) * side) for _ in range(4)]
    x0, y0 = min(max(box[0] + d[0], 0), size - 2), min(max(box[1] + d[1], 0), size - 2)
    return [x0, y0, min(max(box[2] + d[2], x0 + 2), size), min(max(box[3] + d[3], y0 + 2), size)]


def _box_candidates(gt: dict, k: int, rng: random.Random) -> list[str]:
    """k distinct box answers to a grounding prompt (ground truth with `box`): the right box (probability 0.8),
    near misses of growing error, other objects' boxes, and now and then an answer without a box (it scores 0)."""
    size, box = gt["image_size"], gt["box"]
    out = [format_box(box)] if rng.random() < 0.8 else []
    others = [o["box"] for o in gt["objects"] if o["box"] != box]
    for _ in range(200):
        if len(out) >= k:
            break
        roll = rng.random()
        if roll < 0.15 and others:
            cand = format_box(rng.choice(others))
        elif roll < 0.2:
            cand = rng.choice(("i do not know", "left", "the circle"))
        else:
            cand = format_box(_jitter(box, rng, size, rng.choice((0.15, 0.3, 0.6))))
        if cand not in out:
            out.append(cand)
    if len(out) < k:
        raise ValueError(f"could not make {k} distinct box answers for this scene")
    rng.shuffle(out)
    return out


def _detection_candidates(gt: dict, k: int, rng: random.Random) -> list[str]:
    """k distinct detection answers: the right one (probability 0.8), and ones with a box jittered, dropped,
    added or mislabelled."""
    size, objs = gt["image_size"], gt["objects"]
    correct = detection_answer(gt)
    out = [correct] if rng.random() < 0.8 else []
    for _ in range(200):
        if len(out) >= k:
            break
        rows = [[o["color"], o["shape"], list(o["box"])] for o in objs]
        for _ in range(rng.choice((1, 1, 2))):
            kind = rng.choice(("jitter", "drop", "add", "label"))
            i = rng.randrange(len(rows))
            if kind == "drop" and len(rows) > 1:
                rows.pop(i)
            elif kind == "add" or kind == "drop":
                side = int(SIZES[rng.choice(list(SIZES))] * size)
                x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
                rows.append([rng.choice(list(COLORS)), rng.choice(SHAPES), [x0, y0, x0 + side, y0 + side]])
            elif kind == "label":
                rows[i][1] = rng.choice([s for s in SHAPES if s != rows[i][1]])
            else:
                rows[i][2] = _jitter(rows[i][2], rng, size, rng.choice((0.2, 0.5)))
        cand = "; ".join(f"{c} {s} {format_box(b)}" for c, s, b in rows)
        if cand not in out and cand != correct:
            out.append(cand)
    if len(out) < k:
        raise ValueError(f"could not make {k} distinct detection answers for this scene")
    rng.shuffle(out)
    return out


def answer_question(gt: dict, question: str) -> str:
    """The correct answer to any question of QUESTION_TEMPLATES about this scene."""
    q = question.lower()
    ws = words(q)
    color = next((w for w in ws if w in COLORS), None)
    shape = next((w for w in ws if w in SHAPES), None)
    objs = gt["objects"]
    if q.startswith("how many"):
        return COUNT_WORDS[gt["count"]]
    if q.startswith("is there"):
        return "yes" if any(o["color"] == color and o["shape"] == shape for o in objs) else "no"
    if q.startswith("what color"):
        return next((o["color"] for o in objs if o["shape"] == shape), "none")
    if q.startswith("what shape"):
        return next((o["shape"] for o in objs if o["color"] == color), "none")
    if "left or the right" in q:
        o = next((o for o in objs if o["color"] == color and o["shape"] == shape), None)
        if o is None:
            return "none"
        return "left" if (o["box"][0] + o["box"][2]) / 2 < gt["image_size"] / 2 else "right"
    raise ValueError(f"not a question of the demo world: {question!r}")


def write_demo_manifest(
    out_dir: str | Path,
    n: int,
    seed: int,
    task_type: str = "caption",
    k: int = 4,
    eval_fraction: float = 0.2,
    image_size: int = IMAGE_SIZE,
) -> Path:
    """Write `n` scenes as `out_dir/images/NNNNNN.png` and `out_dir/manifest.jsonl` (import manifest
    format, one line per prompt) and return the manifest path. Seeded and deterministic.

    Each line: `{"image", "prompt", "reference": [..], "ground_truth", "split", "candidates": [k]}`.
    For VQA one question per image is drawn from `vqa_pairs`; for grounding one referring expression
    ("Where is the red circle?") about an object no other shares colour and shape with, its ground truth the
    scene plus that object's `box`, its reference the box as the answer format writes it (`[x0, y0, x1, y1]`);
    for detection `DETECTION_PROMPT` with the scene's boxes and labels (reference: `detection_answer`). With ``k=0`` the lines carry no candidates: the
    import then makes prompts without tasks, for a model's own samples to rank (the demo does this).
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {', '.join(TASK_TYPES)}, not {task_type!r}")
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError("eval_fraction must lie in [0, 1]")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_eval = round(n * eval_fraction)
    lines = []
    for i in range(n):
        image, gt = make_scene(rng, image_size)
        while task_type == "grounding" and not grounding_targets(gt):  # two alike objects and nothing else
            image, gt = make_scene(rng, image_size)
        rel = f"images/{i + 1:06d}.png"
        image.save(out / rel)
        if task_type == "caption":
            prompt, reference = CAPTION_PROMPT, reference_caption(gt)
        elif task_type == "grounding":
            prompt, gt = grounding_prompt(gt, rng)
            reference = format_box(gt["box"])
        elif task_type == "detection":
            prompt, reference = DETECTION_PROMPT, detection_answer(gt)
        else:
            prompt, reference = rng.choice(vqa_pairs(gt, rng))
        cands = demo_candidates(gt, k, rng, task=task_type, question=prompt if task_type == "vqa" else None) if k else []
        # Held-out rows spread evenly through the manifest (every 5th at 0.2), not all at its end: the queue
        # serves tasks in manifest order, so the first rankings of a demo include held-out ones and the first
        # round's reward model has held-out pairs to be measured on.
        split = "eval" if (i + 1) * n_eval // n > i * n_eval // n else "train"
        row = {"image": rel, "prompt": prompt, "reference": [reference], "ground_truth": gt, "split": split}
        if cands:
            row["candidates"] = cands
        lines.append(json.dumps(row))
    path = out / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
