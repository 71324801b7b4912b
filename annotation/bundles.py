"""Read an import bundle — a folder or a zip — without letting any entry escape it."""

from __future__ import annotations

import io
import lzma
import os
import stat
import struct
import zipfile
import zlib
from array import array
from pathlib import Path
from typing import BinaryIO

MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")


class BundleError(ValueError):
    pass


def _safe_member(name: str) -> str | None:
    """The normalised relative path of a member, or None if it would land outside the bundle. (String
    operations, not PurePosixPath: a million-entry zip checks a million names.)"""
    if "\\" in name:
        name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = name.split("/")
    if ".." in parts:
        return None
    if "" in parts or "." in parts:
        name = "/".join(part for part in parts if part not in ("", "."))
    return name or None


class Bundle:
    """Common interface: ``exists(name)``, ``read(name, limit)``, ``open(name, limit)`` (a binary stream,
    for a manifest of any size), ``locate(name, limit)`` (where a member's bytes are, for another process to
    read with ``read_located``), ``refused`` (entries we would not touch)."""

    label: str
    refused: list[tuple[str, str]]

    def read(self, name: str, limit: int) -> bytes:  # subclasses define read or locate, or both
        return read_located(self.locate(name, limit), limit)

    def locate(self, name: str, limit: int) -> Located:
        """The member's bytes as a ``Located`` (raises ``BundleError`` for a name outside the bundle, a
        missing one, or one whose stated size is over ``limit``). Bundles that cannot be read from another
        process (a converted dataset's, whose images may live inside its data files) hand over the bytes."""
        return ("bytes", name, name, self.read(name, limit))

    def open(self, name: str, limit: int) -> BinaryIO:
        """A binary stream of the member that fails (``BundleError``) once more than ``limit`` bytes came."""
        return io.BytesIO(self.read(name, limit))

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


# Where a member's bytes are, as plain tuples that a checking process receives (annotation.services.
# import_checks): ("bytes", key, name, data), ("file", key, name, path) or ("zip", key, name, zip path, header
# offset, compressed size, size, method, crc, flags). ``key`` identifies the member within its bundle (the same
# image named twice has one key), ``name`` is what problems quote.
Located = tuple


# What reading a damaged member raises: zipfile's CRC check, and each decompressor's own error (bz2's is an
# OSError).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, lzma.LZMAError)


class _Capped(io.RawIOBase):
    """A stream that raises ``BundleError`` once more than ``limit`` bytes were read from ``inner``: a zip
    member's header can lie about its size (zip bombs), a file can grow."""

    def __init__(self, inner, limit: int, name: str):
        self.inner, self.left, self.limit, self.name = inner, limit, limit, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.inner.read(min(len(buffer), self.left + 1))
        except _DAMAGED as exc:
            where = "in the zip" if isinstance(self.inner, zipfile.ZipExtFile) else "(it could not be read)"
            raise BundleError(f"{self.name!r} is damaged {where} ({exc})") from None
        if len(data) > self.left:
            raise BundleError(f"{self.name!r} unpacks to more than {self.limit:,} bytes")
        self.left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


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

    def locate(self, name: str, limit: int) -> Located:
        path = self._resolve(name)
        if path is None:
            raise BundleError(f"{name!r} points outside the import folder")
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        if size is None or not path.is_file():
            raise BundleError(f"{name!r} is not in the import folder")
        if size > limit:
            raise BundleError(f"{name!r} is {size:,} bytes, over the limit of {limit:,}")
        return ("file", str(path), name, str(path))

    def open(self, name: str, limit: int) -> BinaryIO:
        path = self.locate(name, limit)[3]
        return io.BufferedReader(_Capped(open(path, "rb"), limit, name), 1 << 16)


_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # a central directory record (zipfile.structCentralDir)
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # a local file header (zipfile.structFileHeader)


class ZipBundle(Bundle):
    """A zip read through its central directory, kept compact: a million members cost ~40 bytes each (the
    hash of the name and where the member is), not Python's ``ZipInfo`` objects (~600 bytes each, 600 MB at
    1M images). Members are read with ``zipfile.ZipExtFile`` (every compression method, CRC checked)."""

    def __init__(self, path: Path, *, max_total_bytes: int):
        self.path = path.resolve()
        self.label = path.name
        self.refused = []
        self._fh = open(path, "rb")  # noqa: SIM115 - open for the bundle's life, closed by close()
        try:
            self._index(max_total_bytes)
        except BaseException:
            self._fh.close()
            raise

    def _records(self):
        """(raw name, clean name or None, flags, method, crc, compressed size, size, header offset, mode) of
        each central directory entry, read in blocks."""
        fh = self._fh
        try:
            end = zipfile._EndRecData(fh)
        except OSError as exc:
            raise BundleError(f"{self.label}: not a zip file ({exc})") from None
        if end is None:
            raise BundleError(f"{self.label}: not a zip file (no end of central directory)")
        size_cd, offset_cd = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]
        concat = end[zipfile._ECD_LOCATION] - size_cd - offset_cd
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
            concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
        self._concat = concat
        fh.seek(offset_cd + concat)
        left, buf, pos = size_cd, b"", 0
        while True:
            if len(buf) - pos < 1 << 16 and left:
                chunk = fh.read(min(left, 1 << 22))
                left -= len(chunk)
                buf, pos = buf[pos:] + chunk, 0
            if len(buf) - pos < _CENTRAL.size:
                return
            rec = _CENTRAL.unpack_from(buf, pos)
            if rec[0] != zipfile.stringCentralDir:
                raise BundleError(f"{self.label}: not a zip file (bad central directory)")
            n, m, k = rec[12], rec[13], rec[14]
            raw = buf[pos + 46 : pos + 46 + n]
            flags, method, crc, csize, size, offset = rec[5], rec[6], rec[9], rec[10], rec[11], rec[18]
            if 0xFFFFFFFF in (csize, size, offset):  # zip64: the real values are in the extra field
                size, csize, offset = _zip64(buf[pos + 46 + n : pos + 46 + n + m], size, csize, offset)
            pos += 46 + n + m + k
            name = raw.decode("utf-8" if flags & 0x800 else "cp437")
            yield name, flags, method, crc, csize, size, offset, rec[17] >> 16

    def _index(self, max_total_bytes: int) -> None:
        import numpy as np

        hashes, where = array("q"), array("Q")  # where: header offset, compressed size, size, method|flags<<16, crc
        total, tops, self.prefix = 0, set(), ""
        manifest_at_top = False
        for name, flags, method, crc, csize, size, offset, mode in self._records():
            if name.endswith("/"):
                continue
            clean = _safe_member(name)
            if clean is None:
                self.refused.append((name, "zip entry would land outside the import folder; refused"))
                continue
            if stat.S_ISLNK(mode):
                self.refused.append((name, "zip entry is a symbolic link; refused"))
                continue
            total += size
            hashes.append(hash(clean))
            where.extend((offset, csize, size, method | flags << 16, crc))
            manifest_at_top = manifest_at_top or clean in MANIFEST_NAMES
            if len(tops) < 2:
                tops.add(clean.split("/", 1)[0])
        if total > max_total_bytes:
            raise BundleError(f"{self.label}: unpacks to {total:,} bytes, over the limit of {max_total_bytes:,}")
        keys = np.frombuffer(hashes, dtype=np.int64) if hashes else np.zeros(0, dtype=np.int64)
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]
        self._where = where
        self.member_count = len(hashes)
        # Common layout: everything inside one top folder. Look through it for the manifest.
        if len(tops) == 1 and not manifest_at_top:
            top = next(iter(tops))
            if any(self._member(f"{top}/{m}") is not None for m in MANIFEST_NAMES):
                self.prefix = top + "/"

    def _member(self, clean: str) -> int | None:
        """The member's index (the last entry of that name, as zipfile does), or None."""
        key = hash(clean)
        i = int(self._sorted.searchsorted(key, side="right")) - 1
        if i < 0 or self._sorted[i] != key:
            return None
        return int(self._order[i])

    @property
    def members(self):
        """The names of the members (a fresh pass over the central directory: converters look for files)."""
        for name, *_, mode in self._records():
            clean = None if name.endswith("/") else _safe_member(name)
            if clean is not None and not stat.S_ISLNK(mode):
                yield clean

    def exists(self, name: str) -> bool:
        clean = _safe_member(name)
        return clean is not None and self._member(self.prefix + clean) is not None

    def locate(self, name: str, limit: int) -> Located:
        clean = _safe_member(name)
        if clean is None:
            raise BundleError(f"{name!r} points outside the import folder")
        i = self._member(self.prefix + clean)
        if i is None:
            raise BundleError(f"{name!r} is not in {self.label}")
        offset, csize, size, method_flags, crc = self._where[5 * i : 5 * i + 5]
        if size > limit:
            raise BundleError(f"{name!r} is {size:,} bytes, over the limit of {limit:,}")
        return ("zip", i, name, str(self.path), offset + self._concat, csize, size, method_flags, crc, self.prefix + clean)

    def read(self, name: str, limit: int) -> bytes:
        return _read_zip(self._fh, self.locate(name, limit), limit)

    def open(self, name: str, limit: int) -> BinaryIO:
        return io.BufferedReader(_Capped(_open_zip_member(self._fh, self.locate(name, limit)), limit, name), 1 << 16)

    def close(self) -> None:
        self._fh.close()


def _zip64(extra: bytes, size: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
            break
        pos += 4 + length
    return size, csize, offset


def _member_data(fh, located: Located) -> int:
    """Seek ``fh`` (an open file of the zip) to the member's data, after checking its local header; returns
    the compression method."""
    _, _, name, _, offset, _, _, method_flags, _, clean = located
    method, flags = method_flags & 0xFFFF, method_flags >> 16
    if flags & 0x1:
        raise BundleError(f"{name!r} is encrypted in the zip; zip it without a password")
    fh.seek(offset)
    header = fh.read(_LOCAL.size)
    if len(header) < _LOCAL.size or header[:4] != zipfile.stringFileHeader:
        raise BundleError(f"{name!r} is damaged in the zip (bad local header)")
    fields = _LOCAL.unpack(header)
    n, m = fields[10], fields[11]
    local = fh.read(n).decode("utf-8" if flags & 0x800 else "cp437")
    if _safe_member(local) != clean:
        raise BundleError(f"{name!r} is damaged in the zip (its local header names {local!r})")
    fh.seek(m, os.SEEK_CUR)
    return method


def _open_zip_member(fh, located: Located) -> zipfile.ZipExtFile:
    """The member's decompressing stream (CRC checked at its end) on ``fh``, an open file of its zip."""
    method = _member_data(fh, located)
    info = zipfile.ZipInfo(located[9])
    info.compress_type, info.compress_size, info.file_size, info.CRC, info.flag_bits = (
        method, located[5], located[6], located[8], located[7] >> 16)
    try:
        return zipfile.ZipExtFile(fh, "rb", info)
    except NotImplementedError as exc:
        raise BundleError(f"{located[2]!r}: {exc}; zip it with deflate") from None


_zip_files: dict[str, BinaryIO] = {}  # a checking process's open zips, by path (it reads one import at a time)


def read_located(located: Located, limit: int) -> bytes:
    """The bytes of a located member, never more than ``limit`` (raises ``BundleError``). Runs in the
    importing process or in a checking process (annotation.services.import_checks)."""
    kind, name = located[0], located[2]
    if kind == "zip":
        path = located[3]
        fh = _zip_files.get(path)
        if fh is None:
            for old in _zip_files.values():
                old.close()
            _zip_files.clear()
            fh = _zip_files[path] = open(path, "rb")  # noqa: SIM115 - kept open for the next member
        return _read_zip(fh, located, limit)
    if kind == "bytes":
        data = located[3]
    else:
        with open(located[3], "rb") as fh:
            data = fh.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{name!r} unpacks to more than {limit:,} bytes")
    return data


def _read_zip(fh, located: Located, limit: int) -> bytes:
    """A member's bytes, CRC checked. Stored and deflated members (what zip tools write) are read here in
    one piece, an import's image per row without ``zipfile``'s stream objects; other methods through them."""
    name, csize, size, crc = located[2], located[5], located[6], located[8]
    try:
        method = _member_data(fh, located)
        if method == zipfile.ZIP_STORED:
            data = fh.read(min(csize, limit + 1))
        elif method == zipfile.ZIP_DEFLATED:
            inflater = zlib.decompressobj(-15)
            data = inflater.decompress(fh.read(csize), limit + 1)
            if len(data) <= limit and not inflater.eof:
                raise zlib.error("the compressed data ends early")
        else:
            with _open_zip_member(fh, located) as member:
                return _capped(member.read(limit + 1), name, limit)
    except _DAMAGED as exc:
        raise BundleError(f"{name!r} is damaged in the zip ({exc})") from None
    data = _capped(data, name, limit)
    if len(data) != size:
        raise BundleError(f"{name!r} is damaged in the zip (it holds {len(data):,} bytes, its directory says {size:,})")
    if zlib.crc32(data) != crc:
        raise BundleError(f"{name!r} is damaged in the zip (Bad CRC-32: its bytes do not match the zip's checksum)")
    return data


def _capped(data: bytes, name: str, limit: int) -> bytes:
    if len(data) > limit:
        raise BundleError(f"{name!r} unpacks to more than {limit:,} bytes")
    return data


def open_bundle(path: Path, *, max_total_bytes: int) -> Bundle:
    if path.is_dir():
        return FolderBundle(path)
    if path.is_file() and zipfile.is_zipfile(path):
        return ZipBundle(path, max_total_bytes=max_total_bytes)
    if path.is_file():
        raise BundleError(f"{path.name}: give a folder or a .zip file holding a manifest and images")
    raise BundleError(f"{path}: no such file or folder")
