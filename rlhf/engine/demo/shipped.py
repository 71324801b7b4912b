"""The demo base shipped in the repository, and the cache key of demo builds. Stdlib only: the launcher and
the web tier check the shipped model without importing torch.

`rlhf/engine/demo/base/` holds the weights, tokenizer, processor, `build.json` and `SHA256SUMS` of the build
that `BuildDemoConfig()`'s defaults describe, so a fresh clone serves and trains the demo at once;
`python -m rlhf.engine build-demo --ship-to rlhf/engine/demo/base` rebuilds it (docs/engine.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from ..config import BuildDemoConfig, data_dir


def config_hash(cfg: BuildDemoConfig) -> str:
    """Short hash of the fields that change the built model (not `threads`)."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "threads"}
    for f in dataclasses.fields(cfg):  # 0 and 0.0 are one config: a JSON file and Python code write them differently
        if f.type in ("float", float) and isinstance(d.get(f.name), int):
            d[f.name] = float(d[f.name])
    for name in ("label_noise", "omit_objects", "extra_objects"):
        if not d[name]:  # clean builds keep the folder names they had before these fields existed
            del d[name]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def demo_model_dir(cfg: BuildDemoConfig, root: Path | None = None) -> Path:
    """Cache folder of the demo model built from `cfg`."""
    return (root or data_dir()) / "models" / f"demo-{config_hash(cfg)}"


# The shipped build of `BuildDemoConfig()`; `build-demo` with the defaults rebuilds it.
SHIPPED_DIR = Path(__file__).parent / "base"
CHECKSUMS = "SHA256SUMS"


class DemoModelError(RuntimeError):
    """A shipped demo model whose files do not match their checksums (or are missing)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksums(folder: Path) -> None:
    """Raise DemoModelError unless every file listed in `folder/SHA256SUMS` is there with its checksum."""
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise DemoModelError(f"{folder} has no {CHECKSUMS}")
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        f = folder / name.strip()
        if not f.is_file():
            raise DemoModelError(f"{f} is missing")
        if _sha256(f) != digest:
            raise DemoModelError(f"{f} does not match its checksum in {sums} (a Git LFS pointer, or a file changed "
                                 "by hand?)")


def shipped_build(cfg: BuildDemoConfig, folder: Path = SHIPPED_DIR) -> Path | None:
    """`folder` when it holds the build of `cfg` (same config hash) with intact files; None when it holds
    another build or nothing; DemoModelError when it holds this build damaged, with the command that rebuilds
    it (a silent rebuild would take many minutes and give a model that differs on another machine)."""
    info = folder / "build.json"
    if not info.is_file() or json.loads(info.read_text()).get("hash") != config_hash(cfg):
        return None
    try:
        verify_checksums(folder)
    except DemoModelError as e:
        raise DemoModelError(f"the shipped demo model is damaged: {e}. Restore it from git (`git checkout -- "
                             f"{folder}`) or rebuild it: python -m rlhf.engine build-demo --ship-to {folder}") from e
    return folder


def ship(model_dir: Path, dest: Path) -> Path:
    """Copy a built demo model into `dest` (replacing what is there) and write its SHA256SUMS."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.is_file():
            old.unlink()
    names = sorted(f.name for f in model_dir.iterdir() if f.is_file() and f.name != CHECKSUMS)
    for name in names:
        shutil.copy2(model_dir / name, dest / name)
    (dest / CHECKSUMS).write_text("".join(f"{_sha256(dest / n)}  {n}\n" for n in names))
    return dest
