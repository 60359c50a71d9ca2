"""Reading image files: decode (reduced-scale when possible), orient, convert, describe."""

from __future__ import annotations

import hashlib
import io
import logging
import struct
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import UnreadableImage
from indexer.types import ImageMeta

if TYPE_CHECKING:
    from PIL import Image as PILImage

log = logging.getLogger(__name__)

#: File name extensions the scanner picks up (lower case, with the dot).
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".hif",
        ".avif",
    }
)

#: JPEGs are decoded at reduced scale (DCT scaling) down to this many times the model's
#: input size: far cheaper than a full decode, and still antialiased by the final resize.
DRAFT_OVERSAMPLE = 2

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED, _DATETIME = 36867, 36868, 306
_MAKE, _MODEL, _ORIENTATION = 271, 272, 274
_heif_registered = False


def content_hash(data: bytes) -> str:
    """The content hash stored per file: 128-bit BLAKE2b, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _register_plugins() -> None:
    global _heif_registered
    if not _heif_registered:
        from PIL import Image

        # pixsearch applies its own, configurable pixel limit before decoding.
        Image.MAX_IMAGE_PIXELS = None
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # pragma: no cover - optional at run time
            log.warning("pillow-heif is not installed: HEIC/HEIF files cannot be read")
        _heif_registered = True


def _clean(value: object, limit: int = 64) -> str | None:
    if not isinstance(value, str | bytes):
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = text.replace("\x00", "").strip()
    return text[:limit] or None


def _parse_datetime(value: object) -> datetime | None:
    text = _clean(value, 32)
    if not text:
        return None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text[:19], fmt)
        except ValueError:
            continue
    return None


def _gps_coordinate(values: object, ref: object) -> float | None:
    try:
        d, m, s = (float(v) for v in values)  # type: ignore[attr-defined]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    coord = d + m / 60.0 + s / 3600.0
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if isinstance(ref, str) and ref.strip().upper() in ("S", "W"):
        coord = -coord
    return coord if np.isfinite(coord) else None


def _describe(img: PILImage.Image, fmt: str) -> ImageMeta:
    exif = img.getexif()
    width, height = img.size
    if exif.get(_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90 degrees
        width, height = height, width
    taken_at = None
    make = model = None
    lat = lon = None
    if exif:
        sub = exif.get_ifd(_EXIF_IFD)
        taken_at = (
            _parse_datetime(sub.get(_DATETIME_ORIGINAL))
            or _parse_datetime(sub.get(_DATETIME_DIGITIZED))
            or _parse_datetime(exif.get(_DATETIME))
        )
        make, model = _clean(exif.get(_MAKE)), _clean(exif.get(_MODEL))
        gps = exif.get_ifd(_GPS_IFD)
        if gps:
            lat = _gps_coordinate(gps.get(2), gps.get(1))
            lon = _gps_coordinate(gps.get(4), gps.get(3))
    return ImageMeta(width, height, fmt, taken_at, make, model, lat, lon)


def to_rgb(img: PILImage.Image) -> PILImage.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha over white, 16-bit scaled, not clipped."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        top = float(arr.max()) if arr.size else 0.0
        scale = 1.0 / 257.0 if top > 255 else (255.0 if img.mode == "F" and top <= 1.0 else 1.0)
        gray = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return img.convert("RGB")


def decode(
    data: bytes, *, max_pixels: int, min_side: int | None = None
) -> tuple[PILImage.Image, ImageMeta]:
    """Decode image bytes into an oriented RGB image and its metadata.

    With `min_side`, a JPEG is decoded at the smallest DCT scale whose short side stays at
    least `min_side` pixels. Raises `UnreadableImage` with a short reason.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    _register_plugins()
    if not data:
        raise UnreadableImage("empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableImage("not an image") from None
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"image too large ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImage(f"cannot read image: {exc}") from None
    try:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise UnreadableImage("image has no pixels")
        if width * height > max_pixels:
            raise UnreadableImage(
                f"image too large: {width}x{height} is over the limit of "
                f"{max_pixels / 1e6:g} megapixels (PIXSEARCH_MAX_IMAGE_PIXELS)"
            )
        fmt = (img.format or "unknown").lower()
        meta = _describe(img, fmt)
        if min_side and fmt == "jpeg":
            img.draft(None, (min_side, min_side))
        img.load()
        # Without in_place, an upright image comes back as a full copy (~2.5 ms at 12 MP).
        ImageOps.exif_transpose(img, in_place=True)
        return to_rgb(img), meta
    except UnreadableImage:
        raise
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg or "premature end" in msg.lower():
            raise UnreadableImage("truncated image") from None
        raise UnreadableImage(f"cannot decode image: {msg[:120]}") from None
    except (ValueError, SyntaxError, EOFError, struct.error, ZeroDivisionError) as exc:
        raise UnreadableImage(f"cannot decode image: {str(exc)[:120]}") from None


def read_file(path: str) -> bytes:
    """Read a whole file, turning OS errors into `UnreadableImage`."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise UnreadableImage("file disappeared or is a dangling symbolic link") from None
    except PermissionError:
        raise UnreadableImage("permission denied") from None
    except IsADirectoryError:
        raise UnreadableImage("is a directory") from None
    except OSError as exc:
        raise UnreadableImage(f"cannot read file: {exc.strerror or exc}") from None
