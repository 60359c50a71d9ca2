"""Reading image files: decode (reduced-scale when possible), orient, convert, describe."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import ImageTooLarge, UnreadableImage
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
#: The only decoders pixsearch lets Pillow use, whatever a file is named or holds: others
#: would run on untrusted bytes too (EPS even hands the file to Ghostscript).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "HEIF", "AVIF")
NOT_SUPPORTED = "not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIF/AVIF)"

#: Most memory one decode may take (decoded pixels and the copies made to convert them),
#: whatever the pixel limit allows: a 250 MP RGB photo needs 1 GB, and one working copy.
DECODE_BUDGET = 2 << 30
#: Decodes larger than this hand their freed heap back to the OS when done.
_TRIM_ABOVE = 64 << 20
#: Bytes per pixel of an image held by Pillow, by mode (multi-band modes take 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
#: Bytes per pixel `to_rgb` needs on top, by mode: 32-bit modes go through float64 arrays.
_CONVERT_BYTES = {"RGB": 0, "I": 26, "F": 26, "I;16": 24, "I;16B": 24, "I;16L": 24, "I;16N": 24}
_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}  # EXIF orientation -> Image.Transpose

_formats: tuple[str, ...] | None = None


def content_hash(data: bytes) -> str:
    """The content hash stored per file: 128-bit BLAKE2b, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _register_plugins() -> tuple[str, ...]:
    """Register HEIF once; the supported formats this Pillow can open."""
    global _formats
    if _formats is None:
        from PIL import Image

        # pixsearch applies its own, configurable pixel limit before decoding.
        Image.MAX_IMAGE_PIXELS = None
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # pragma: no cover - optional at run time
            log.warning("pillow-heif is not installed: HEIC/HEIF files cannot be read")
        Image.init()
        _formats = tuple(f for f in SUPPORTED_FORMATS if f in Image.OPEN)
    return _formats


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


class MemoryBudget:
    """Memory that the decodes in flight may take together: each waits for its share, so
    that many large images at once (concurrent uploads, reader threads) stay within it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.waiting = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Take `n` bytes of the budget for the block (all of it if `n` is larger)."""
        with self._cond:
            self.waiting += 1
            try:
                self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.total)
            finally:
                self.waiting -= 1
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


#: The process's decoding memory: DECODE_BUDGET for all decodes together.
decode_memory = MemoryBudget(DECODE_BUDGET)


def _shrink(img: PILImage.Image, factor: int) -> PILImage.Image:
    """Box-reduce by `factor` in (nearly) the image's own mode, before any RGB copy."""
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    return img.reduce(factor)


def _memory_needed(img: PILImage.Image, factor: int) -> int:
    """Bytes the decode will hold at its peak: the decoded image, the copy a reduction in
    its mode needs, and the RGB conversion (of the reduced image)."""
    w, h = img.size
    native = w * h * _MODE_BYTES.get(img.mode, 4)
    pre = 0
    if factor > 1 and (img.mode in ("1", "P") or img.mode.startswith("I;16")):
        pre = w * h * (1 if img.mode == "1" else 4)
    after = (w // factor) * (h // factor) if factor > 1 else w * h
    mode = "L" if img.mode == "1" else "I" if img.mode.startswith("I;16") else img.mode
    return native + pre + after * (4 + _CONVERT_BYTES.get(mode, 4))


def decode(
    data: bytes, *, max_pixels: int, min_side: int | None = None
) -> tuple[PILImage.Image, ImageMeta]:
    """Decode image bytes into an oriented RGB image and its metadata.

    With `min_side`, the image is decoded or reduced to the smallest size whose short side
    stays at least `min_side` pixels (a JPEG by DCT scaling, others by a box filter in their
    own mode, before any RGB copy). Raises `UnreadableImage` with a short reason, and
    `ImageTooLarge` for an image over the pixel limit or the memory budget.
    """
    spent = [0]
    try:
        return _decode(data, max_pixels, min_side, spent)
    finally:
        # The decoded pixels are gone by now; without this, the heap keeps them resident.
        if spent[0] > _TRIM_ABOVE:
            return_freed_memory()


def _decode(
    data: bytes, max_pixels: int, min_side: int | None, spent: list[int]
) -> tuple[PILImage.Image, ImageMeta]:
    from PIL import Image, UnidentifiedImageError

    formats = _register_plugins()
    if not data:
        raise UnreadableImage("empty file")
    try:
        img: PILImage.Image = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        raise UnreadableImage(NOT_SUPPORTED) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large ({exc})") from None
    except MemoryError:
        raise ImageTooLarge("not enough memory to read this image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImage(f"cannot read image: {exc}") from None
    try:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise UnreadableImage("image has no pixels")
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image too large: {width}x{height} is over the limit of "
                f"{max_pixels / 1e6:g} megapixels"
            )
        fmt = (img.format or "unknown").lower()
        meta = _describe(img, fmt)
        if min_side and fmt == "jpeg":
            img.draft(None, (min_side, min_side))
        # Reduced in its own mode first: a 1-bit or palette image is 4x larger as RGB.
        factor = min(img.size) // min_side if min_side else 1
        factor = factor if factor >= 2 else 1
        need = spent[0] = _memory_needed(img, factor)
        if need > DECODE_BUDGET:
            raise ImageTooLarge(
                f"image too large: decoding {img.size[0]}x{img.size[1]} ({img.mode}) would take "
                f"{need / 2**30:.1f} GiB of memory"
            )
        with decode_memory.hold(need):
            img.load()
            # Read once loaded (a TIFF's tags are complete only then), applied after reducing.
            orientation = img.getexif().get(_ORIENTATION)
            if factor > 1:
                img = _shrink(img, factor)
            if orientation in _TRANSPOSE:
                img = img.transpose(Image.Transpose(_TRANSPOSE[orientation]))
            return to_rgb(img), meta
    except UnreadableImage:
        raise
    except MemoryError:
        raise ImageTooLarge("not enough memory to decode this image") from None
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg or "premature end" in msg.lower():
            raise UnreadableImage("truncated image") from None
        raise UnreadableImage(f"cannot decode image: {msg[:120]}") from None
    except (ValueError, SyntaxError, EOFError, struct.error, ZeroDivisionError) as exc:
        raise UnreadableImage(f"cannot decode image: {str(exc)[:120]}") from None


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only): after a large decode they would
    otherwise stay resident in the process."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def open_regular(path: str) -> int:
    """Open a file for reading, only if it is a regular file (symbolic links followed).

    Non-blocking, so that a FIFO or a device put where a photo was can never hang the
    caller in `open()`; the opened descriptor is checked, not the path (no race).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        # Looked at first, so that what is a device already is never opened at all.
        _check_regular(os.stat(path).st_mode)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnreadableImage("file disappeared or is a dangling symbolic link") from None
    except PermissionError:
        raise UnreadableImage("permission denied") from None
    except IsADirectoryError:
        raise UnreadableImage("is a directory") from None
    except (OSError, ValueError) as exc:
        raise UnreadableImage(
            f"cannot read file: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        _check_regular(os.fstat(fd).st_mode)  # what was opened, in case the path changed
    except OSError as exc:
        os.close(fd)
        raise UnreadableImage(f"cannot read file: {exc.strerror or exc}") from None
    except UnreadableImage:
        os.close(fd)
        raise
    return fd


def _check_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise UnreadableImage("is a directory")
    if not stat.S_ISREG(mode):
        raise UnreadableImage("not a regular file (a FIFO, device or socket)")


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """Read a whole regular file, turning OS errors into `UnreadableImage`; a file over
    `max_bytes` is refused before it is read."""
    fd = open_regular(path)
    try:
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise ImageTooLarge(
                    f"file too large: {size} bytes, more than any image under the pixel "
                    f"limit needs ({max_bytes})"
                )
            return fh.read()
    except MemoryError:
        raise ImageTooLarge("not enough memory to read this file") from None
    except OSError as exc:
        raise UnreadableImage(f"cannot read file: {exc.strerror or exc}") from None


def max_file_bytes(max_pixels: int) -> int:
    """The largest file worth reading for a pixel limit: 8 bytes a pixel (16-bit RGBA, not
    compressed) and room for metadata."""
    return 8 * max_pixels + (64 << 20)
