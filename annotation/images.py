"""Checking and storing images: a real image, within byte and pixel limits, EXIF orientation applied,
stored once under MEDIA_ROOT by the sha256 of the stored bytes."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
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
    """Validate image bytes and return what will be stored. Raises ``BadImage``."""
    max_bytes = max_bytes or settings.LENSLOOP_MAX_IMAGE_BYTES
    max_pixels = max_pixels or settings.LENSLOOP_MAX_IMAGE_PIXELS
    if len(data) > max_bytes:
        raise BadImage(f"file is {len(data):,} bytes, over the limit of {max_bytes:,}")
    if not data:
        raise BadImage("file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as probe:
                fmt = probe.format
                width, height = probe.size
                # Decompression bombs: refuse on the header's size, before decoding any pixel.
                if width * height > max_pixels:
                    raise BadImage(f"image is {width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,}")
                probe.verify()
            if fmt not in FORMATS:
                raise BadImage(f"format {fmt} is not accepted; use one of {', '.join(sorted(FORMATS))}")
            with PILImage.open(io.BytesIO(data)) as img:
                img.load()  # verify() does not decode; a truncated file fails only here
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


def store_image(checked: CheckedImage) -> Path:
    """Write the bytes under MEDIA_ROOT if not already there. Atomic: temp file, then rename."""
    path = Path(settings.MEDIA_ROOT) / checked.relpath
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(checked.data)
    os.replace(tmp, path)
    return path


def media_path(relpath: str) -> Path:
    return Path(settings.MEDIA_ROOT) / relpath
