"""Which prompts a project holds out of training: the stable, hashed choice made at import.

A manifest row that says ``split`` keeps it. A row that does not is held out (``eval``) when the hash of
its key falls below the project's ``heldout_fraction``; the key is the row's ``id`` when it has one,
else the image's sha256 and the prompt's text. The hash depends on nothing else (not the order of
rows, the import, the day or the server), so importing the same data again, into this project or
another with the same fraction, holds out the same prompts; a project whose fraction is raised later
holds out a superset of what it held out before, for rows imported after the change.
"""

from __future__ import annotations

import hashlib

TRAIN, EVAL = "train", "eval"


def split_key(*, external_id: str, image_sha256: str, text: str) -> str:
    """What the hash is taken of: the row's own id, else its image and prompt (the row's content)."""
    if external_id:
        return f"id:{external_id}"
    return f"content:{image_sha256}:{' '.join(text.split())}"


def hashed_unit(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: the first 64 bits of its sha256."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def hashed_split(key: str, fraction: float) -> str:
    """``eval`` for about ``fraction`` of keys, ``train`` for the rest; the same answer for a key every time."""
    return EVAL if hashed_unit(key) < fraction else TRAIN
