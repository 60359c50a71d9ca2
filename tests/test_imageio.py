"""Reading every supported format and mode, EXIF orientation and metadata."""

from __future__ import annotations

import io
from datetime import datetime
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from indexer.errors import UnreadableImage
from indexer.imageio import decode
from tests.helpers import picture

LIMIT = 10**8


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats_decode_to_the_same_picture(fmt: str) -> None:
    src = picture(5, (128, 96))
    img, meta = decode(_encode(src, fmt), max_pixels=LIMIT)
    assert img.mode == "RGB" and img.size == (128, 96)
    assert (meta.width, meta.height) == (128, 96)
    assert meta.format == fmt.lower()
    diff = np.abs(np.asarray(img, float) - np.asarray(src, float)).mean()
    assert diff < (40 if fmt == "GIF" else 8), diff


def test_heic() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    src = picture(6, (128, 96))
    try:
        data = _encode(src, "HEIF", quality=90)
    except (KeyError, OSError, ValueError) as exc:  # pragma: no cover - encoder missing
        pytest.skip(f"no HEIF encoder: {exc}")
    img, meta = decode(data, max_pixels=LIMIT)
    assert meta.format == "heif" and img.size == (128, 96)
    assert np.abs(np.asarray(img, float) - np.asarray(src, float)).mean() < 10


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (0, 0, 250))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    img, _ = decode(data, max_pixels=LIMIT)
    r, _, b = img.getpixel((16, 16))  # type: ignore[misc]
    assert r > 200 and b < 50


def test_modes_convert_correctly() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red in CMYK
    img, _ = decode(_encode(cmyk, "JPEG"), max_pixels=LIMIT)
    r, g, b = img.getpixel((5, 5))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60

    sixteen = Image.fromarray(np.full((16, 16), 32768, np.uint16))
    img, _ = decode(_encode(sixteen, "PNG"), max_pixels=LIMIT)
    assert 120 <= img.getpixel((3, 3))[0] <= 135  # mid grey, not clipped to white

    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent black
    img, _ = decode(_encode(rgba, "PNG"), max_pixels=LIMIT)
    assert img.getpixel((3, 3)) == (255, 255, 255)

    pal = Image.new("P", (16, 16), 3)
    pal.putpalette([0, 0, 0] * 3 + [0, 200, 0] + [0, 0, 0] * 252)
    img, _ = decode(_encode(pal, "PNG"), max_pixels=LIMIT)
    assert img.getpixel((3, 3)) == (0, 200, 0)


def _with_exif(img: Image.Image, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[271] = "Fujifilm"
    exif[272] = "X-T5\x00"
    exif.get_ifd(0x8769)[36867] = "2023:07:14 18:30:05"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[3] = "N", "W"
    gps[2] = (
        TiffImagePlugin.IFDRational(Fraction(52)),
        TiffImagePlugin.IFDRational(30),
        TiffImagePlugin.IFDRational(0),
    )
    gps[4] = (
        TiffImagePlugin.IFDRational(1),
        TiffImagePlugin.IFDRational(15),
        TiffImagePlugin.IFDRational(36),
    )
    return _encode(img, "JPEG", exif=exif, quality=95)


def test_exif_metadata() -> None:
    _, meta = decode(_with_exif(picture(1, (64, 48))), max_pixels=LIMIT)
    assert meta.taken_at == datetime(2023, 7, 14, 18, 30, 5)
    assert (meta.camera_make, meta.camera_model) == ("Fujifilm", "X-T5")
    assert meta.gps_lat == pytest.approx(52.5)
    assert meta.gps_lon == pytest.approx(-(1 + 15 / 60 + 36 / 3600))


def test_exif_orientation_is_applied() -> None:
    src = picture(4, (80, 40))
    # Stored sideways with orientation 6 ("rotate 90 clockwise to view").
    stored = src.transpose(Image.Transpose.ROTATE_90)
    img, meta = decode(_with_exif(stored, orientation=6), max_pixels=LIMIT)
    assert img.size == (80, 40) and (meta.width, meta.height) == (80, 40)
    assert np.abs(np.asarray(img, float) - np.asarray(src, float)).mean() < 10


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
@pytest.mark.parametrize("min_side", [None, 100])
def test_orientation_is_applied_to_reduced_images_too(fmt: str, min_side: int | None) -> None:
    src = picture(5, (800, 400))
    stored = src.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    extra = {"tiffinfo": {0x0112: 6}} if fmt == "TIFF" else {"exif": exif.tobytes()}
    img, _ = decode(_encode(stored, fmt, **extra), max_pixels=LIMIT, min_side=min_side)
    assert img.size == ((800, 400) if min_side is None else (200, 100))
    expected = np.asarray(src.resize(img.size, Image.Resampling.BOX), float)
    assert np.abs(np.asarray(img, float) - expected).mean() < 10


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    big = picture(9, (2400, 1600)).resize((2400, 1600))
    img, meta = decode(_encode(big, "JPEG"), max_pixels=LIMIT, min_side=200)
    assert (meta.width, meta.height) == (2400, 1600)  # the real size is recorded
    assert 200 <= min(img.size) < 800  # but far fewer pixels were decoded


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = _encode(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(UnreadableImage, match="too large: 4000x4000"):
        decode(data, max_pixels=1_000_000)
