"""Read an import bundle — a folder or a zip — without letting any entry escape it."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")


class BundleError(ValueError):
    pass


def _safe_member(name: str) -> str | None:
    """The normalised relative path of a member, or None if it would land outside the bundle."""
    if "\\" in name:
        name = name.replace("\\", "/")
    posix = PurePosixPath(name)
    if posix.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    if any(part == ".." for part in posix.parts):
        return None
    clean = "/".join(part for part in posix.parts if part not in ("", "."))
    return clean or None


class Bundle:
    """Common interface: ``names()``, ``read(name, limit)``, ``refused`` (entries we would not touch)."""

    label: str
    refused: list[tuple[str, str]]

    def read(self, name: str, limit: int) -> bytes:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def find_manifest(self, name: str | None = None) -> str:
        candidates = [name] if name else list(MANIFEST_NAMES)
        for candidate in candidates:
            clean = _safe_member(candidate)
            if clean and self.exists(clean):
                return clean
        wanted = name or " or ".join(MANIFEST_NAMES)
        raise BundleError(f"{self.label}: no {wanted} at the top of the bundle")

    def close(self) -> None:
        pass


class FolderBundle(Bundle):
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.label = str(root)
        self.refused = []

    def _resolve(self, name: str) -> Path | None:
        clean = _safe_member(name)
        if clean is None:
            return None
        path = (self.root / clean).resolve()
        # A symlink inside the folder may still point outside it.
        if not path.is_relative_to(self.root):
            return None
        return path

    def exists(self, name: str) -> bool:
        path = self._resolve(name)
        return path is not None and path.is_file()

    def read(self, name: str, limit: int) -> bytes:
        path = self._resolve(name)
        if path is None:
            raise BundleError(f"{name!r} points outside the import folder")
        if not path.is_file():
            raise BundleError(f"{name!r} is not in the import folder")
        size = path.stat().st_size
        if size > limit:
            raise BundleError(f"{name!r} is {size:,} bytes, over the limit of {limit:,}")
        return path.read_bytes()


class ZipBundle(Bundle):
    def __init__(self, path: Path, *, max_total_bytes: int):
        self.label = path.name
        try:
            self.zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise BundleError(f"{path.name}: not a zip file ({exc})") from None
        self.refused = []
        self.members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in self.zf.infolist():
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            clean = _safe_member(info.filename)
            if clean is None:
                self.refused.append((info.filename, "zip entry would land outside the import folder; refused"))
                continue
            if stat.S_ISLNK(mode):
                self.refused.append((info.filename, "zip entry is a symbolic link; refused"))
                continue
            total += info.file_size
            self.members[clean] = info
        if total > max_total_bytes:
            raise BundleError(f"{path.name}: unpacks to {total:,} bytes, over the limit of {max_total_bytes:,}")
        # Common layout: everything inside one top folder. Look through it for the manifest.
        tops = {name.split("/", 1)[0] for name in self.members}
        self.prefix = ""
        if len(tops) == 1 and not any(name in self.members for name in MANIFEST_NAMES):
            top = next(iter(tops))
            if any(f"{top}/{m}" in self.members for m in MANIFEST_NAMES):
                self.prefix = top + "/"

    def exists(self, name: str) -> bool:
        clean = _safe_member(name)
        return clean is not None and (self.prefix + clean) in self.members

    def read(self, name: str, limit: int) -> bytes:
        clean = _safe_member(name)
        if clean is None:
            raise BundleError(f"{name!r} points outside the import folder")
        info = self.members.get(self.prefix + clean)
        if info is None:
            raise BundleError(f"{name!r} is not in {self.label}")
        if info.file_size > limit:
            raise BundleError(f"{name!r} is {info.file_size:,} bytes, over the limit of {limit:,}")
        with self.zf.open(info) as fh:
            # The header's size can lie (zip bombs): never read more than the limit.
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise BundleError(f"{name!r} unpacks to more than {limit:,} bytes")
        return data

    def close(self) -> None:
        self.zf.close()


def open_bundle(path: Path, *, max_total_bytes: int) -> Bundle:
    if path.is_dir():
        return FolderBundle(path)
    if path.is_file() and zipfile.is_zipfile(path):
        return ZipBundle(path, max_total_bytes=max_total_bytes)
    if path.is_file():
        raise BundleError(f"{path.name}: give a folder or a .zip file holding a manifest and images")
    raise BundleError(f"{path}: no such file or folder")
