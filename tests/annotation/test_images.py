"""Image checks: a plain PNG is checked without Pillow's decoder (``annotation.images._plain_png``), and it
must accept exactly what Pillow's decoding accepts; every other image goes through Pillow."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pytest
from PIL import Image as PILImage

from annotation import images
from annotation.images import (
    BadImage,
    PackWriter,
    _decoded,
    _plain_png,
    check_image,
    media_path,
    open_media,
    pack_name,
    read_media,
    store_image,
)

LIMIT = 10_000_000


def _png(mode: str, size=(13, 7), **save) -> bytes:
    img = PILImage.new(mode, size)
    for x in range(size[0]):  # pixels that differ, so the rows use several filters
        for y in range(size[1]):
            value = (x * 37 + y * 11) % 256
            img.putpixel((x, y), value if mode in ("1", "L", "P", "I;16") else tuple([value] * len(mode)))
    if mode == "P":
        img.putpalette(list(range(256)) * 3)
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def _chunk(cid: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + cid + body + zlib.crc32(cid + body).to_bytes(4, "big")


def _with_pixels(png: bytes, raw: bytes, *, compress=zlib.compress) -> bytes:
    """``png`` with its pixel data replaced by ``compress(raw)`` in one IDAT chunk, every CRC right."""
    head_end = 8 + 8 + 13 + 4  # signature + IHDR
    return png[:head_end] + _chunk(b"IDAT", compress(raw)) + _chunk(b"IEND", b"")


def _pillow_refuses(data: bytes) -> bool:
    try:
        _decoded(data, LIMIT)
    except (OSError, SyntaxError, ValueError, zlib.error, BadImage):
        return True
    return False


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_a_plain_png_of_every_colour_type_is_checked_without_pillow_and_agrees_with_it(mode):
    data = _png(mode)
    assert _plain_png(data, LIMIT) == (13, 7)
    checked = check_image(data, max_bytes=LIMIT, max_pixels=LIMIT)
    with PILImage.open(io.BytesIO(data)) as img:
        assert (checked.format, checked.width, checked.height) == ("PNG", *img.size)
    assert checked.data == data


def _raw_rows(filter_byte: int, width=13, height=7, channels=3) -> bytes:
    """Rows of varied pixels (so the compressed stream is long enough to cut), each with ``filter_byte``."""
    return b"".join(bytes([filter_byte]) + bytes((y * 97 + i * i * 31) % 256 for i in range(width * channels))
                    for y in range(height))


@pytest.mark.parametrize(
    "broken, why",
    [
        (lambda png: _with_pixels(png, _raw_rows(0)[:-5]), "truncated"),  # a row short
        (lambda png: _with_pixels(png, _raw_rows(7)), "unknown row filter"),  # no such filter
        (lambda png: _with_pixels(png, _raw_rows(0), compress=lambda raw: zlib.compress(raw)[:60]), "truncated"),
        (lambda png: _with_pixels(png, _raw_rows(0), compress=lambda raw: b"\x78\x9c" + bytes(40)), "broken image"),
    ],
    ids=["a-row-short", "unknown-filter", "compressed-data-cut", "not-deflate"],
)
def test_a_broken_png_with_right_checksums_is_refused_as_pillow_refuses_it(broken, why):
    data = broken(_png("RGB"))
    assert _pillow_refuses(data)
    with pytest.raises(BadImage, match=why if why != "broken image" else "broken image"):
        check_image(data, max_bytes=LIMIT, max_pixels=LIMIT)


def test_pngs_that_are_not_plain_go_through_pillow():
    # Pillow writes no interlaced PNG; a 1×1 one's Adam7 data is its one row, so flag the header as interlaced
    one = _png("RGB", size=(1, 1))
    header = one[12:29][:-1] + b"\x01"  # b"IHDR" + its 13 bytes, the last one (interlace) set
    interlaced = one[:8] + _chunk(b"IHDR", header[4:]) + one[33:]
    assert _plain_png(interlaced, LIMIT) is None
    assert check_image(interlaced, max_bytes=LIMIT, max_pixels=LIMIT).width == 1
    exif = PILImage.Exif()
    exif[0x0112] = 6  # shown rotated 90°: only Pillow applies it
    rotated = check_image(_png("RGB", exif=exif.tobytes()), max_bytes=LIMIT, max_pixels=LIMIT)
    assert (rotated.width, rotated.height) == (7, 13)
    png = _png("RGB")
    with_ztxt = png[:33] + _chunk(b"zTXt", b"k\0\0" + zlib.compress(b"v")) + png[33:]
    assert _plain_png(with_ztxt, LIMIT) is None
    assert check_image(with_ztxt, max_bytes=LIMIT, max_pixels=LIMIT).height == 7


def test_a_plain_png_over_the_pixel_limit_is_refused_before_its_pixels_are_inflated():
    with pytest.raises(BadImage, match="over the limit of 50"):
        check_image(_png("RGB"), max_bytes=LIMIT, max_pixels=50)


def test_a_stored_file_left_short_by_a_killed_import_is_written_again(tmp_path):
    checked = check_image(_png("RGB"), max_bytes=LIMIT, max_pixels=LIMIT)
    path = store_image(checked, media_root=tmp_path)
    assert Path(path).read_bytes() == checked.data
    with open(path, "r+b") as fh:  # as a process killed mid-write leaves it
        fh.truncate(len(checked.data) // 2)
    assert store_image(checked, media_root=tmp_path) == path
    assert Path(path).read_bytes() == checked.data
    assert sorted(p.name for p in Path(path).parent.iterdir()) == [Path(path).name]  # no temporary file left


def test_packed_images_are_read_back_and_copied_out_to_their_content_address_once(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    a, b = (check_image(_png(mode), max_bytes=LIMIT, max_pixels=LIMIT) for mode in ("RGB", "L"))
    writer = PackWriter(str(tmp_path), "imp")
    file_a, file_b = writer.add(a), writer.add(b)
    writer.close()
    assert pack_name(file_a) == pack_name(file_b) and pack_name(a.relpath) is None
    assert file_b.endswith(f"/{len(a.data)}+{len(b.data)}/{Path(b.relpath).name}")  # after a, b's length
    assert (tmp_path / "packs" / pack_name(file_a)).stat().st_size == len(a.data) + len(b.data)
    assert read_media(file_b) == b.data and open_media(file_a).read() == a.data
    assert not (tmp_path / b.relpath).exists()  # nothing copied out to read it
    path = media_path(file_b)  # a real file, for what needs a path (a training step's images)
    assert path == tmp_path / b.relpath and path.read_bytes() == b.data
    mtime = path.stat().st_mtime_ns
    assert media_path(file_b) == path and path.stat().st_mtime_ns == mtime  # copied out once
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_pack_cut_short_is_an_error_naming_the_pack_and_a_full_pack_starts_another(tmp_path, settings, monkeypatch):
    settings.MEDIA_ROOT = tmp_path
    a, b = (check_image(_png(mode), max_bytes=LIMIT, max_pixels=LIMIT) for mode in ("RGB", "L"))
    monkeypatch.setattr(images, "PACK_LIMIT", len(a.data) + 1)
    writer = PackWriter(str(tmp_path), "imp")
    file_a, file_b = writer.add(a), writer.add(b)
    writer.close()
    assert pack_name(file_a) != pack_name(file_b) and "/0+" in file_b  # b did not fit: a new pack, from 0
    with open(tmp_path / "packs" / pack_name(file_b), "r+b") as fh:
        fh.truncate(len(b.data) - 1)
    with pytest.raises(OSError, match=rf"pack .*{pack_name(file_b)} holds {len(b.data) - 1} of image"):
        read_media(file_b)
    assert read_media(file_a) == a.data
