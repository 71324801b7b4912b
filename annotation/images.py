"""Checking and storing images: a real image, within byte and pixel limits, EXIF orientation applied,
stored once under MEDIA_ROOT by the sha256 of the stored bytes.

An image is kept one of two ways, and ``Image.file`` says which:

* a file of its own at its content address, ``images/<sha[:2]>/<sha256>.<ext>`` (``store_image``);
* packed: appended to a large file that an import's checking process writes alone (``PackWriter``),
  ``packs/<pack name>/<offset>+<length>/<sha256>.<ext>``. An import of distinct images stores them this way
  (on a disk where creating a file costs 30–200 µs of the kernel's time, one file per image was the import's
  largest cost). Readers never care: ``read_media`` and ``open_media`` read either, and ``media_path``
  gives a real file, copying a packed image out to its content address the first time one is asked for.

Either way the name's last part is ``<sha256>.<ext>``, which exports use as the image's file name."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from isal import isal_zlib
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


class BadImage(ValueError):
    """The bytes are not an image we accept; the message says why."""


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    sha256: str
    format: str
    width: int
    height: int
    size_bytes: int

    @property
    def relpath(self) -> str:
        return content_address(f"{self.sha256}.{FORMATS[self.format]}")


def content_address(name: str) -> str:
    """Where an image with a file of its own is, under MEDIA_ROOT: ``name`` is ``<sha256>.<ext>``."""
    return f"images/{name[:2]}/{name}"


def check_image(data: bytes, *, max_bytes: int | None = None, max_pixels: int | None = None) -> CheckedImage:
    """Validate image bytes and return what will be stored. Raises ``BadImage``.

    The image is decoded once: a plain PNG (``_plain_png``: the common chunks, not interlaced, no EXIF) by
    inflating its pixel data here and checking every row's filter and every chunk's checksum — everything
    that decoding it could find wrong, at a third of what Pillow's decoding costs; any other image is opened
    once with Pillow and its pixels decoded (``load``: a truncated or corrupt file fails there; a PNG's chunk
    checksums are checked on the bytes, what Pillow's ``verify`` does, without a second open). The limits
    default to the settings; a checking process passes them (it has no Django)."""
    max_bytes = max_bytes or settings.LENSLOOP_MAX_IMAGE_BYTES
    max_pixels = max_pixels or settings.LENSLOOP_MAX_IMAGE_PIXELS
    if len(data) > max_bytes:
        raise BadImage(f"file is {len(data):,} bytes, over the limit of {max_bytes:,}")
    if not data:
        raise BadImage("file is empty")
    try:
        size = _plain_png(data, max_pixels) if data[:8] == _PNG_SIGNATURE else None
        if size is not None:
            fmt, (width, height) = "PNG", size
        else:
            data, fmt, width, height = _decoded(data, max_pixels)
    except BadImage:
        raise
    except (UnidentifiedImageError, PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise BadImage(f"not a readable image ({exc.__class__.__name__}: {exc})") from None
    except (OSError, SyntaxError, ValueError, zlib.error, isal_zlib.error) as exc:
        raise BadImage(f"broken image: {exc}") from None
    return CheckedImage(
        data=data, sha256=hashlib.sha256(data).hexdigest(), format=fmt, width=width, height=height, size_bytes=len(data)
    )


def _too_large(width: int, height: int, max_pixels: int) -> BadImage:
    return BadImage(f"image is {width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,}")


def _decoded(data: bytes, max_pixels: int) -> tuple[bytes, str, int, int]:
    """Any accepted image, through Pillow: (the bytes to store, upright; format; width; height)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        with PILImage.open(io.BytesIO(data)) as img:
            fmt = img.format
            width, height = img.size
            # Decompression bombs: refuse on the header's size, before decoding any pixel.
            if width * height > max_pixels:
                raise _too_large(width, height, max_pixels)
            if fmt not in FORMATS:
                raise BadImage(f"format {fmt} is not accepted; use one of {', '.join(sorted(FORMATS))}")
            if fmt == "PNG":
                _png_chunks(data)
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            if orientation not in (1, None):
                upright = ImageOps.exif_transpose(img)
                buf = io.BytesIO()
                save_kwargs = {"quality": 95} if fmt == "JPEG" else {}
                upright.save(buf, format=fmt, **save_kwargs)
                data = buf.getvalue()
                width, height = upright.size
    return data, fmt, width, height


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Colour type → (channels, the bit depths the PNG specification allows)
_PNG_COLOURS = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)), 6: (4, (8, 16))}
# Chunks that change neither the pixels nor their orientation and hold nothing compressed: a PNG made of
# these (and IHDR, PLTE, IDAT, IEND) is checked by ``_plain_png``; any other goes through Pillow.
_PLAIN_CHUNKS = {b"tEXt", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"bKGD", b"tIME", b"sBIT", b"hIST", b"sPLT"}


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """Every chunk up to IEND as (type, start of its data, its length), each chunk's CRC checked (what
    ``PngImagePlugin.verify`` checks; decoding skips the CRCs of the pixel data)."""
    chunks, pos, end = [], 8, len(data)
    while True:
        if pos + 8 > end:
            raise SyntaxError("truncated PNG file")
        length, cid = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if pos + 12 + length > end:
            raise SyntaxError(f"truncated PNG file (chunk {cid!r})")
        chunks.append((cid, pos + 8, length))
        if cid == b"IEND":  # (whose CRC Pillow does not check either)
            return chunks
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) != crc:
            raise SyntaxError(f"broken PNG file (bad checksum in chunk {cid!r})")
        pos += 12 + length


def _plain_png(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) of a plain PNG whose every chunk checksum holds and whose pixel data inflates to
    exactly its rows, each with a known filter (what decoding it checks); ``None`` for a PNG that is not
    plain (interlaced, other chunks, EXIF), which Pillow then decodes. Raises ``SyntaxError`` or
    ``isal_zlib.error`` for a broken one, ``BadImage`` for one over the pixel limit."""
    if data[8:16] != b"\x00\x00\x00\rIHDR" or len(data) < 33:
        return None
    header = data[16:29]
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, compression, filtering, interlace = header[8:13]
    if width * height > max_pixels:  # on the header, before any other work
        raise _too_large(width, height, max_pixels)
    chunks = _png_chunks(data)
    channels, depths = _PNG_COLOURS.get(colour, (0, ()))
    if not width or not height or depth not in depths or compression or filtering or interlace:
        return None
    names = [c[0] for c in chunks[1:-1]]
    first, last = (names.index(b"IDAT"), len(names) - names[::-1].index(b"IDAT")) if b"IDAT" in names else (0, 0)
    if (not last or any(n != b"IDAT" for n in names[first:last]) or (colour == 3 and b"PLTE" not in names[:first])
            or any(n not in _PLAIN_CHUNKS and n != b"PLTE" for n in names[:first])
            or any(n not in _PLAIN_CHUNKS for n in names[last:])):
        return None
    stride = 1 + (width * channels * depth + 7) // 8
    expected = stride * height
    pixels = isal_zlib.decompressobj().decompress(  # ISA-L's inflate: 2.4× zlib's on 64×64 pictures
        b"".join(data[s : s + n] for _, s, n in chunks[1 + first : 1 + last]), expected
    )
    if len(pixels) < expected:
        raise SyntaxError(f"truncated PNG file (pixel data has {len(pixels):,} of {expected:,} bytes)")
    if max(pixels[::stride]) > 4:
        raise SyntaxError("broken PNG file (unknown row filter)")
    return width, height


_incoming = itertools.count()


def store_image(checked: CheckedImage, *, media_root: str | Path | None = None, store=None) -> str:
    """Write the bytes under MEDIA_ROOT (or ``media_root``) if not already there, and return the file's path.

    Written in place: created exclusively at its content address, so two processes storing the same image
    never write one file together. A file that a killed process left short has the wrong size, which the
    next store notices and replaces atomically (a temporary name of this process's own, then rename). With
    an object store (``store``, a ``lensloop.storage.S3Config``) a new image is uploaded before it is
    renamed into place, so a failed upload is retried next time. (Plain ``os`` calls: an import stores a
    file per row.)"""
    path = f"{media_root or settings.MEDIA_ROOT}/{checked.relpath}"
    folder = path.rsplit("/", 1)[0]
    if store is None:
        try:
            fd = _create(path, folder)
        except FileExistsError:
            if os.stat(path).st_size == checked.size_bytes:
                return path
        else:
            try:
                _write_all(fd, checked.data)
            except BaseException:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:  # still ours: nobody replaced it meanwhile
                    os.unlink(path)
                raise
            finally:
                os.close(fd)
            return path
    elif os.path.exists(path):
        return path
    tmp = _temporary_copy(folder, checked.data)
    if store is not None:
        from lensloop.storage import media_key, upload_file

        try:
            upload_file(store, tmp, media_key(checked.relpath))
        except BaseException:
            os.unlink(tmp)
            raise
    os.replace(tmp, path)
    return path


def _temporary_copy(folder: str, data: bytes) -> str:
    """``data`` in a new file of this process's own in ``folder``, to be renamed into place."""
    tmp = f"{folder}/.incoming-{os.getpid()}-{next(_incoming)}"
    fd = _create(tmp, folder)
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _create(path: str, folder: str) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        return os.open(path, flags, 0o644)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def media_path(relpath: str) -> Path:
    """The local file of a stored image; with object storage, fetched from the bucket when this machine
    lacks it (``lensloop.storage``). A packed image is copied out of its pack to its content address the
    first time (then that file is the image's)."""
    packed = _PACKED.match(relpath)
    if packed:
        path = Path(settings.MEDIA_ROOT) / content_address(packed["name"])
        if not (path.exists() and path.stat().st_size == int(packed["length"])):
            os.replace(_temporary_copy(str(path.parent), read_media(relpath)), path)
        return path
    path = Path(settings.MEDIA_ROOT) / relpath
    if not path.exists():
        from lensloop import storage

        cfg = storage.config()
        if cfg is not None:
            storage.download_file(cfg, storage.media_key(relpath), path)
    return path


def read_media(relpath: str) -> bytes:
    """A stored image's bytes, from its pack or its file. A pack this machine lacks is read from the object
    store's copy (``media/packs/…``: copied there when an installation moves to object storage), the image's
    bytes only. A pack shorter than the image's place in it (cut by a full disk, or damaged) raises
    ``OSError`` naming the pack."""
    packed = _PACKED.match(relpath)
    if not packed:
        return media_path(relpath).read_bytes()
    offset, length = int(packed["offset"]), int(packed["length"])
    pack = Path(settings.MEDIA_ROOT) / "packs" / packed["pack"]
    try:
        fd = os.open(pack, os.O_RDONLY)
    except FileNotFoundError:
        from lensloop import storage

        cfg = storage.config()  # a machine without the pack: a ranged read of the bucket's copy
        data = None if cfg is None else storage.read_range(cfg, storage.media_key(f"packs/{packed['pack']}"),
                                                           offset, length)
        if data is None:
            raise FileNotFoundError(f"pack {pack} of image {packed['name']} is missing"
                                    + ("" if cfg is None else " here and in the bucket")) from None
    else:
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
    if len(data) != length:
        raise OSError(f"pack {pack} holds {len(data)} of image {packed['name']}'s {length} bytes at {offset}")
    return data


def open_media(relpath: str) -> BinaryIO:
    """A stored image as a binary file object (a packed one is read into memory: images are small)."""
    if _PACKED.match(relpath):
        return io.BytesIO(read_media(relpath))
    return media_path(relpath).open("rb")


# --- packs -----------------------------------------------------------------------------------------------
PACK_LIMIT = 1 << 30  # a pack is closed and a new one started past 1 GiB
_PACKED = re.compile(r"^packs/(?P<pack>[A-Za-z0-9_.-]+\.pack)/(?P<offset>\d+)\+(?P<length>\d+)/(?P<name>[0-9a-f]{64}\.[a-z]+)$")


def pack_name(relpath: str) -> str | None:
    """The pack a stored image is in (``None`` for an image with a file of its own)."""
    packed = _PACKED.match(relpath)
    return packed["pack"] if packed else None


class PackWriter:
    """Appends images to ``<media_root>/packs/<prefix>-<pid>-<n>.pack``, files that this process alone
    writes (created exclusively), and returns each image's ``Image.file``. Nothing rewrites a pack: an
    image's bytes stay where its name says. A pack nobody's ``Image.file`` names (its import failed, was
    rejected or cancelled, or stored only images that were there already) is deleted by the import
    (``annotation.services.imports``)."""

    def __init__(self, media_root: str, prefix: str):
        self.media_root = media_root
        self.folder = f"{media_root}/packs"
        self.prefix = prefix
        self.fd: int | None = None
        self.name = ""
        self.size = 0
        self.opened = 0

    def add(self, checked: CheckedImage) -> str:
        length = len(checked.data)
        if self.fd is None or self.size + length > PACK_LIMIT:
            self._start()
        offset = self.size
        try:
            _write_all(self.fd, checked.data)
        except BaseException:  # a short write: nothing more goes into this pack
            self.close()
            raise
        self.size += length
        return f"packs/{self.name}/{offset}+{length}/{checked.relpath.rsplit('/', 1)[1]}"

    def _start(self) -> None:
        self.close()
        self.name = f"{self.prefix}-{os.getpid()}-{self.opened}.pack"
        self.opened += 1
        self.fd = _create(f"{self.folder}/{self.name}", self.folder)
        self.size = 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
