"""Checking and storing images: a real image, within byte and pixel limits, EXIF orientation applied,
stored once under MEDIA_ROOT by the sha256 of the stored bytes."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
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
        return f"images/{self.sha256[:2]}/{self.sha256}.{FORMATS[self.format]}"


def check_image(data: bytes, *, max_bytes: int | None = None, max_pixels: int | None = None) -> CheckedImage:
    """Validate image bytes and return what will be stored. Raises ``BadImage``.

    The image is opened once and its pixels decoded once (``load``: a truncated or corrupt file fails
    here); a PNG's chunk checksums are checked on the bytes (what Pillow's ``verify`` does, without a
    second open). The limits default to the settings; a checking process passes them (it has no Django)."""
    max_bytes = max_bytes or settings.LENSLOOP_MAX_IMAGE_BYTES
    max_pixels = max_pixels or settings.LENSLOOP_MAX_IMAGE_PIXELS
    if len(data) > max_bytes:
        raise BadImage(f"file is {len(data):,} bytes, over the limit of {max_bytes:,}")
    if not data:
        raise BadImage("file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as img:
                fmt = img.format
                width, height = img.size
                # Decompression bombs: refuse on the header's size, before decoding any pixel.
                if width * height > max_pixels:
                    raise BadImage(f"image is {width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,}")
                if fmt not in FORMATS:
                    raise BadImage(f"format {fmt} is not accepted; use one of {', '.join(sorted(FORMATS))}")
                if fmt == "PNG":
                    _png_checksums(data)
                img.load()
                orientation = img.getexif().get(0x0112, 1)
                if orientation not in (1, None):
                    upright = ImageOps.exif_transpose(img)
                    buf = io.BytesIO()
                    save_kwargs = {"quality": 95} if fmt == "JPEG" else {}
                    upright.save(buf, format=fmt, **save_kwargs)
                    data = buf.getvalue()
                    width, height = upright.size
    except BadImage:
        raise
    except (UnidentifiedImageError, PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise BadImage(f"not a readable image ({exc.__class__.__name__}: {exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"broken image: {exc}") from None
    return CheckedImage(
        data=data, sha256=hashlib.sha256(data).hexdigest(), format=fmt, width=width, height=height, size_bytes=len(data)
    )


def _png_checksums(data: bytes) -> None:
    """Every chunk's CRC up to IEND, as ``PngImagePlugin.verify`` checks them (decoding skips the CRCs of
    the pixel data)."""
    pos, end = 8, len(data)
    while True:
        if pos + 8 > end:
            raise SyntaxError("truncated PNG file")
        length, cid = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if pos + 12 + length > end:
            raise SyntaxError(f"truncated PNG file (chunk {cid!r})")
        if cid == b"IEND":
            return
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) != crc:
            raise SyntaxError(f"broken PNG file (bad checksum in chunk {cid!r})")
        pos += 12 + length


_incoming = itertools.count()


def store_image(checked: CheckedImage, *, media_root: str | Path | None = None, store=None) -> Path:
    """Write the bytes under MEDIA_ROOT (or ``media_root``) if not already there. Atomic: a temporary name
    of this process's own, then rename; two processes storing the same image write the same bytes. With an
    object store (``store``, a ``lensloop.storage.S3Config``), a newly written image is uploaded too."""
    path = os.path.join(media_root or settings.MEDIA_ROOT, checked.relpath)
    if os.path.exists(path):
        return Path(path)
    tmp = f"{os.path.dirname(path)}/.incoming-{os.getpid()}-{next(_incoming)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(checked.data)
    if store is not None:  # uploaded before it counts as stored here, so a failed upload is retried next time
        from lensloop.storage import media_key, upload_file

        try:
            upload_file(store, tmp, media_key(checked.relpath))
        except BaseException:
            os.unlink(tmp)
            raise
    os.replace(tmp, path)
    return Path(path)


def media_path(relpath: str) -> Path:
    """The local file of a stored image; with object storage, fetched from the bucket when this machine
    lacks it (``lensloop.storage``)."""
    path = Path(settings.MEDIA_ROOT) / relpath
    if not path.exists():
        from lensloop import storage

        cfg = storage.config()
        if cfg is not None:
            storage.download_file(cfg, storage.media_key(relpath), path)
    return path
