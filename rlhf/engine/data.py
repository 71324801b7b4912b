"""The files between Django and the engine (DESIGN.md "Boundary"), and turning them into model batches.

Readers validate each line and name the file and line of a bad record. `encode_prompts` and
`encode_completions` build left-padded batches for any VLM processor: the prompt goes through the
processor (which expands image tokens), the completion through the tokenizer, and the two are joined
token by token, so the prompt/completion boundary is exact.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

PREFERENCE_KEYS = ("images", "prompt", "chosen", "rejected")
PROMPT_KEYS = ("prompt_id", "images", "prompt")


class DataError(ValueError):
    """A data file that does not follow DESIGN.md's formats; the message names file and line."""


def read_jsonl(path: str | Path) -> list[dict]:
    """All objects of a JSONL file (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({e})") from e
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write rows atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; the Django job (maybe another user) reads these files
    with os.fdopen(fd, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def _require(rows: list[dict], keys: tuple[str, ...], path: Path) -> None:
    for i, row in enumerate(rows, 1):
        missing = [k for k in keys if k not in row]
        if missing:
            raise DataError(f"{path}:{i}: missing {missing}; expected at least {list(keys)}")
        if not isinstance(row["images"], list):
            raise DataError(f"{path}:{i}: 'images' must be a list of paths relative to the file's folder")


def read_preferences(path: str | Path) -> list[dict]:
    """Preference records `{"id", "project", "images", "prompt", "chosen", "rejected", "margin", ...}`
    with image paths made absolute (they are relative to the JSONL's folder)."""
    path = Path(path)
    rows = read_jsonl(path)
    _require(rows, PREFERENCE_KEYS, path)
    for row in rows:
        row["images"] = [str(path.parent / p) for p in row["images"]]
        row.setdefault("margin", 1)
    return rows


def read_prompts(path: str | Path) -> list[dict]:
    """Prompt-set records `{"prompt_id", "images", "prompt", "reference"?, "ground_truth"?}` with image
    paths made absolute. `reference` is normalised to a list of strings."""
    path = Path(path)
    rows = read_jsonl(path)
    _require(rows, PROMPT_KEYS, path)
    for row in rows:
        row["images"] = [str(path.parent / p) for p in row["images"]]
        ref = row.get("reference")
        if isinstance(ref, str):
            row["reference"] = [ref]
    return rows


def load_images(paths: list, cache: dict | None = None) -> list[Image.Image]:
    """PIL RGB images from paths (or PIL images passed through); `cache` memoises by path."""
    out = []
    for p in paths:
        if isinstance(p, Image.Image):
            out.append(p.convert("RGB"))
            continue
        if cache is not None and p in cache:
            out.append(cache[p])
            continue
        if not Path(p).is_file():
            raise DataError(f"image {p} does not exist")
        with Image.open(p) as im:
            img = im.convert("RGB")
        if cache is not None:
            cache[p] = img
        out.append(img)
    return out


# A chat template for processors that have none (PaliGemma as shipped): the image tokens, the prompt, a new line,
# and for an assistant turn its text and EOS. The engine's own prompts and TRL's conversational rows then read
# the same way.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% for part in parts %}{% if part['type'] == 'image' %}{{ image_token }}{% endif %}{% endfor %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}"
    "{% else %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{{ eos_token }}"
    "{% endif %}{% endfor %}"
)


def fallback_chat_template(processor) -> str:
    """``FALLBACK_CHAT_TEMPLATE`` with the processor's image token."""
    image_token = (getattr(processor, "image_token", None) or getattr(processor.tokenizer, "image_token", None)
                   or "<image>")
    return FALLBACK_CHAT_TEMPLATE.replace("{{ image_token }}", image_token)


def prompt_text(processor, prompt: str, n_images: int) -> str:
    """The model's chat-formatted user turn with `n_images` images and a generation prompt."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    template = None if getattr(processor, "chat_template", None) else fallback_chat_template(processor)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, chat_template=template)


def encode_prompts(processor, images: list[list[Image.Image]], prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch: input_ids, attention_mask and the processor's image tensors.

    The images go to the processor as one list per prompt: Gemma 3's, Idefics3's and SmolVLM's processors
    read a flat list as every image belonging to one prompt. ``labels`` (PaliGemma's processor returns them)
    are dropped: the engine builds its own targets, and a model given labels computes a loss of its own."""
    texts = [prompt_text(processor, p, len(ims)) for p, ims in zip(prompts, images, strict=True)]
    processor.tokenizer.padding_side = "left"
    nested = [list(ims) for ims in images] if any(images) else None
    # A chat template that writes BOS itself (Gemma 3's, Idefics3's) would get a second one from the tokenizer.
    bos = processor.tokenizer.bos_token
    own_bos = {"add_special_tokens": False} if bos and all(t.startswith(bos) for t in texts) else {}
    batch = dict(processor(text=texts, images=nested, padding=True, return_tensors="pt", **own_bos))
    batch.pop("labels", None)
    return batch


def answer_token_type(processor, key: str) -> int:
    """The value an answer token takes in a per-token tensor the processor returns beside input_ids.
    PaliGemma's ``token_type_ids`` split the sequence into a prefix (0), attended in both directions, and a
    suffix (1), attended causally: an answer is suffix, or its tokens would see the words after them. Gemma 3's
    ``token_type_ids`` and Qwen2-VL's ``mm_token_type_ids`` mark image tokens (1): an answer is text (0)."""
    return 1 if key == "token_type_ids" and type(processor).__name__.startswith("PaliGemma") else 0


@dataclass
class CompletionBatch:
    """A left-padded (prompt + completion) batch. `completion_mask` (B, T) marks completion tokens."""

    inputs: dict[str, torch.Tensor]
    completion_mask: torch.Tensor

    def to(self, device) -> CompletionBatch:
        return CompletionBatch({k: v.to(device) for k, v in self.inputs.items()}, self.completion_mask.to(device))


def encode_completions(
    processor, images: list[list[Image.Image]], prompts: list[str], completions: list[str], add_eos: bool = True
) -> CompletionBatch:
    """Prompt (through the processor) followed by completion tokens (+ EOS), joined and left-padded.

    Text-aligned tensors other than input_ids/attention_mask (e.g. token_type_ids) are extended over the
    completion with ``answer_token_type`` (padding gets 0).
    """
    prompt_batch = encode_prompts(processor, images, prompts)
    tok = processor.tokenizer
    comp_ids = tok(list(completions), add_special_tokens=False)["input_ids"]
    eos = [tok.eos_token_id] if add_eos and tok.eos_token_id is not None else []
    ids_p, mask_p = prompt_batch["input_ids"], prompt_batch["attention_mask"]
    B, _ = ids_p.shape
    text_keys = [k for k, v in prompt_batch.items()
                 if k not in ("input_ids", "attention_mask") and torch.is_tensor(v) and v.shape == ids_p.shape]
    rows = []
    for b in range(B):
        keep = mask_p[b].bool()
        c = torch.tensor(comp_ids[b] + eos, dtype=ids_p.dtype)
        rows.append((ids_p[b][keep], c, {k: prompt_batch[k][b][keep] for k in text_keys}))
    T = max(len(p) + len(c) for p, c, _ in rows)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((B, T), pad_id, dtype=ids_p.dtype)
    attention_mask = torch.zeros((B, T), dtype=mask_p.dtype)
    completion_mask = torch.zeros((B, T), dtype=torch.long)
    extra = {k: torch.zeros((B, T), dtype=prompt_batch[k].dtype) for k in text_keys}
    for b, (p, c, ex) in enumerate(rows):
        n = len(p) + len(c)
        input_ids[b, T - n:] = torch.cat([p, c])
        attention_mask[b, T - n:] = 1
        completion_mask[b, T - len(c):] = 1
        for k, v in ex.items():
            extra[k][b, T - n:T - len(c)] = v
            extra[k][b, T - len(c):] = answer_token_type(processor, k)
    inputs = {k: v for k, v in prompt_batch.items() if k not in ("input_ids", "attention_mask", *text_keys)}
    inputs.update(input_ids=input_ids, attention_mask=attention_mask, **extra)
    return CompletionBatch(inputs, completion_mask)

