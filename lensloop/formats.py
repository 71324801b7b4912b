"""TRL's conversational format, written in one place for both sides of the file boundary: the export
(``annotation.services.exports``: the ``trl`` JSONL and the Parquet / ``datasets`` exports) and the
engine's TRL trainers (``rlhf.engine.trl_policy``), so that an exported dataset is what the engine trains
on. Stdlib only, no Django: the engine imports it too.

An image placeholder carries ``"text": None`` so that every content item has the same keys (a Parquet
struct, and what ``datasets`` makes of the list anyway).
"""

from __future__ import annotations


def user_turn(prompt: str, n_images: int = 1) -> list[dict]:
    """The conversational prompt: one user turn with ``n_images`` image placeholders, then the text."""
    images = [{"type": "image", "text": None} for _ in range(n_images)]
    return [{"role": "user", "content": [*images, {"type": "text", "text": prompt}]}]


def assistant_turn(text: str) -> list[dict]:
    """One assistant turn: a chosen or rejected answer."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def preference_row(record: dict) -> dict:
    """A preference record (DESIGN's export format) as TRL's conversational preference row: ``images``,
    ``prompt``, ``chosen``, ``rejected`` (what DPOTrainer reads)."""
    return {
        "images": record["images"],
        "prompt": user_turn(record["prompt"], len(record["images"])),
        "chosen": assistant_turn(record["chosen"]),
        "rejected": assistant_turn(record["rejected"]),
    }


def pairs_from_groups(groups: list[list]) -> list[tuple]:
    """Every (chosen, rejected, margin) implied by a ranking (groups of tied candidates, best first: ids in the
    app, positions in the engine demo); tied candidates give no pair.

    ``margin`` is the rank distance between the two groups (1 for neighbours). The one rule from a ranking
    to pairs: the queue's submits (``annotation.pairs``) and the engine demo's simulated annotators
    (``rlhf.engine.demo.annotators``) use it.
    """
    pairs = []
    for i, better in enumerate(groups):
        for j in range(i + 1, len(groups)):
            for chosen in better:
                for rejected in groups[j]:
                    pairs.append((chosen, rejected, j - i))
    return pairs
