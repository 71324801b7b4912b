"""Checking and storing an import's images, in parallel processes (all cores), and what became of each.

Decoding dominates an import of distinct images (a 64×64 PNG costs ~0.2 ms to check against ~0.05 ms for
everything else its row needs), so the importing process hands batches of *located* images (where their
bytes are: ``annotation.bundles.Located``) to a pool of processes that read, check and store them and answer
with what they found. Processes are spawned, not forked: the importing process may be an rq worker with a
heartbeat thread and an open database connection, neither of which a forked child may touch. The checking
processes import no Django settings; the limits and the media folder come with the pool.

A small import never starts a pool: its first ``INLINE_IMAGES`` images are checked in the importing
process, where spawning processes (~0.3 s) would cost more than it saves.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass

from annotation.bundles import BundleError, Located, read_located
from annotation.images import BadImage, PackWriter, check_image, store_image

INLINE_IMAGES = 2000  # images checked in the importing process before a pool starts

Outcome = tuple | str  # (sha256, format, width, height, size_bytes, file), or why the image was refused


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int
    media_root: str
    store: object = None  # lensloop.storage.S3Config with object storage: each new image is uploaded too
    # New images are appended to packs named after this (``annotation.images.PackWriter``), not stored one
    # file each; None: one file each (and always with object storage, whose objects are one image each).
    pack_prefix: str | None = None


_limits: Limits | None = None  # a checking process's, set once when it starts
_packs: dict[tuple[str, str], PackWriter] = {}  # this process's packs, by (media folder, import's prefix)


def _start(limits: Limits) -> None:
    global _limits
    _limits = limits
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def check_located(batch: list[Located], limits: Limits | None = None) -> list[Outcome]:
    """Read, check and store each located image (content-addressed, so storing twice is harmless)."""
    limits = limits or _limits
    out: list[Outcome] = []
    for located in batch:
        try:
            checked = check_image(read_located(located, limits.max_bytes), max_bytes=limits.max_bytes,
                                  max_pixels=limits.max_pixels)
            file = _store(checked, limits)
        except (BundleError, BadImage) as exc:
            out.append(str(exc))
        else:
            out.append((checked.sha256, checked.format, checked.width, checked.height, checked.size_bytes, file))
    return out


def _store(checked, limits: Limits) -> str:
    """Store a checked image and return its ``Image.file``: packed when the import packs (unless a file of
    its own is there already), else a file at its content address."""
    if limits.pack_prefix is None or limits.store is not None:
        store_image(checked, media_root=limits.media_root, store=limits.store)
        return checked.relpath
    try:
        if os.stat(f"{limits.media_root}/{checked.relpath}").st_size == checked.size_bytes:
            return checked.relpath
    except FileNotFoundError:
        pass
    key = (limits.media_root, limits.pack_prefix)
    pack = _packs.get(key)
    if pack is None:
        pack = _packs[key] = PackWriter(*key)
    return pack.add(checked)


def close_pack(limits: Limits) -> None:
    """Close this process's pack of the import ``limits`` belong to (the importing process, which checked
    the first images itself, calls it when its import ends; a checking process ends with its import)."""
    pack = _packs.pop((limits.media_root, limits.pack_prefix), None)
    if pack is not None:
        pack.close()


class _Done:
    def __init__(self, value):
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self):
        return self.value


class Checker:
    """``submit(batch)`` returns a handle whose ``get()`` is the batch's outcomes, in order. Use as a context
    manager: leaving it stops the pool (``terminate`` after an error or a cancel: nothing waits for checks
    whose result nobody will read)."""

    def __init__(self, limits: Limits, processes: int | None = None):
        self.limits = limits
        self.processes = processes if processes is not None else (os.cpu_count() or 1)
        self.inline_left = INLINE_IMAGES
        self.pool = None

    def submit(self, batch: list[Located]):
        if self.pool is None and (self.processes < 2 or len(batch) <= self.inline_left):
            self.inline_left -= len(batch)
            return _Done(check_located(batch, self.limits))
        if self.pool is None:
            self.pool = multiprocessing.get_context("spawn").Pool(self.processes, _start, (self.limits,))
        return self.pool.apply_async(check_located, (batch,))

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            if exc_type is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
            self.pool = None


# What became of each image of an import, by its key in the bundle (annotation.bundles.Located): checked
# or refused, its sha256, whether a row gave it ground truth. A zip's keys are its member numbers, so a
# zip's table is flat arrays (33 bytes per member: 33 MB for a million images); other bundles' keys are
# names, in a dict.
PENDING, OK, BAD, HAS_GT, SPOOLED = 1, 2, 4, 8, 16


class ImageTable:
    def __init__(self, members: int | None):
        self.flat = members is not None
        self.flags = bytearray(members) if self.flat else {}
        self.shas = bytearray(32 * members) if self.flat else {}
        self.errors: dict = {}

    def state(self, key) -> int:
        return self.flags[key] if self.flat else self.flags.get(key, 0)

    def set_state(self, key, flags: int) -> None:
        self.flags[key] = flags

    def record(self, key, outcome: Outcome) -> None:
        if isinstance(outcome, str):
            self.flags[key] = BAD
            self.errors[key] = outcome
            return
        self.flags[key] = OK | (self.state(key) & ~PENDING & 0xFF)
        digest = bytes.fromhex(outcome[0])
        if self.flat:
            self.shas[32 * key : 32 * key + 32] = digest
        else:
            self.shas[key] = digest

    def sha(self, key) -> str:
        return (self.shas[32 * key : 32 * key + 32] if self.flat else self.shas[key]).hex()
