"""A synthetic photo collection for the offline demo and the tests.

Every picture is one of the synthetic shapes (``indexer/shapes.py``) that the shipped
``demo`` CLIP and captioner were trained on, so text search, captions and "more like this"
work on it, dressed as a photographer's collection: EXIF capture dates over several years
(about one in ten pictures has none), a few camera makes and models, GPS positions on
some, JPEG, PNG and WebP files of several pixel sizes, filed in folders by year and month.
File times follow the capture dates (undated pictures get a file time of their own), so a
browse by date has something to show for every picture. Everything follows from the seed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer import shapes

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

#: (make, model, kind): phones carry GPS more often and shoot other sizes than cameras.
CAMERAS: tuple[tuple[str, str, str], ...] = (
    ("Apple", "iPhone 13", "phone"),
    ("Google", "Pixel 7", "phone"),
    ("Canon", "Canon EOS R6", "camera"),
    ("NIKON CORPORATION", "NIKON Z 6_2", "camera"),
    ("FUJIFILM", "X-T4", "camera"),
    ("SONY", "ILCE-7M3", "camera"),
)
#: Pixel sizes (width, height) by kind of source; small enough to index in seconds.
SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "phone": ((1008, 756), (756, 1008), (960, 720), (720, 960)),
    "camera": ((1200, 800), (800, 1200), (1024, 683), (640, 427)),
    "other": ((512, 512), (320, 240), (800, 450), (256, 256)),
}
#: (latitude, longitude, place) the GPS positions are scattered around.
PLACES: tuple[tuple[float, float, str], ...] = (
    (48.8566, 2.3522, "Paris"),
    (-33.8688, 151.2093, "Sydney"),
    (40.7128, -74.0060, "New York"),
    (35.6762, 139.6503, "Tokyo"),
    (64.1466, -21.9426, "Reykjavik"),
    (-22.9068, -43.1729, "Rio de Janeiro"),
)
FIRST_YEAR, LAST_YEAR = 2019, 2024
#: Share of pictures without any capture date (some of them without any EXIF at all).
UNDATED_SHARE = 0.1
_FORMATS = (("jpeg", ".jpg"), ("png", ".png"), ("webp", ".webp"))
_EXTENSIONS = dict(_FORMATS)

# EXIF tags (the ones indexer/imageio.py reads).
_MAKE, _MODEL, _DATETIME, _SOFTWARE = 271, 272, 306, 305
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 36867, 36868


@dataclass(frozen=True)
class DemoPhoto:
    """One demo picture as written: its ground truth and its metadata."""

    path: str  # relative to the demo folder, with "/" separators
    shape: str
    colour: str
    size: str  # "small" or "large" (the shape)
    background: str
    position: str
    caption: str  # the canonical description ("a large red circle on a blue background")
    format: str  # jpeg, png or webp (as the index stores it)
    width: int
    height: int
    taken_at: datetime | None  # the EXIF capture date; None for undated pictures
    file_time: datetime  # the file's modification time (the capture time when there is one)
    make: str | None
    model: str | None
    gps: tuple[float, float] | None  # (latitude, longitude)


def plan_demo(n: int = 300, seed: int = 0) -> list[DemoPhoto]:
    """The demo collection's pictures and metadata, without writing anything."""
    rng = np.random.default_rng([seed, 7])
    span = (datetime(LAST_YEAR, 12, 31) - datetime(FIRST_YEAR, 1, 1)).days
    photos: list[DemoPhoto] = []
    numbers: dict[str, int] = {}
    for sample in shapes.generate_samples(seed, n):
        moment = datetime(FIRST_YEAR, 1, 1) + timedelta(
            days=int(rng.integers(span)),
            seconds=int(rng.integers(7 * 3600, 21 * 3600)),
        )
        undated = rng.random() < UNDATED_SHARE
        bare = undated and rng.random() < 0.5  # no EXIF at all (a screenshot, an export)
        make = model = None
        kind = "other"
        if not bare:
            make, model, kind = CAMERAS[int(rng.integers(len(CAMERAS)))]
        gps = None
        if (kind == "phone" and rng.random() < 0.8) or (kind == "camera" and rng.random() < 0.15):
            lat, lon, _ = PLACES[int(rng.integers(len(PLACES)))]
            gps = (
                round(lat + float(rng.normal(0, 0.05)), 5),
                round(lon + float(rng.normal(0, 0.05)), 5),
            )
        width, height = SIZES[kind][int(rng.integers(len(SIZES[kind])))]
        fmt = _pick_format(kind, rng)
        folder = "Unsorted" if undated else f"{moment.year}/{moment.year}-{moment.month:02d}"
        prefix = {"phone": "IMG_", "camera": "DSC", "other": "image-"}[kind]
        numbers[prefix] = numbers.get(prefix, 0) + 1
        name = f"{prefix}{1000 + numbers[prefix]:04d}{_EXTENSIONS[fmt]}"
        photos.append(
            DemoPhoto(
                path=f"{folder}/{name}",
                shape=sample.shape,
                colour=sample.colour,
                size=sample.size,
                background=sample.background,
                position=sample.position,
                caption=sample.captions[0],
                format=fmt,
                width=width,
                height=height,
                taken_at=None if undated else moment,
                file_time=moment,
                make=make,
                model=model,
                gps=gps,
            )
        )
    return photos


def _pick_format(kind: str, rng: np.random.Generator) -> str:
    # Cameras and phones write JPEG (phones sometimes WebP exports); the rest is mixed.
    weights = {"phone": (0.8, 0.05, 0.15), "camera": (0.9, 0.05, 0.05), "other": (0.3, 0.5, 0.2)}
    return _FORMATS[int(rng.choice(3, p=weights[kind]))][0]


def make_demo_photos(folder: Path, n: int = 300, seed: int = 0) -> list[Path]:
    """Write the demo collection (``plan_demo``) under ``folder``; returns the files written.

    Deterministic in ``seed``; rewrites files that exist. About 300 pictures a few seconds.
    """

    folder = Path(folder)
    written: list[Path] = []
    for i, photo in enumerate(plan_demo(n, seed)):
        img = shapes.render(
            photo.shape,
            photo.colour,
            photo.size,
            photo.background,
            photo.position,
            np.random.default_rng([seed, 1, i]),
            canvas=(photo.width, photo.height),
        )
        path = folder / photo.path
        path.parent.mkdir(parents=True, exist_ok=True)
        exif = _exif(photo)
        options: dict[str, object] = {"exif": exif} if exif is not None else {}
        if photo.format == "jpeg":
            img.save(path, "JPEG", quality=90, **options)
        elif photo.format == "png":
            img.save(path, "PNG", compress_level=1, **options)
        else:
            img.save(path, "WEBP", quality=85, method=0, **options)
        stamp = photo.file_time.timestamp()
        os.utime(path, (stamp, stamp))
        written.append(path)
    log.info("wrote %d demo pictures under %s", len(written), folder)
    return written


def _exif(photo: DemoPhoto) -> Image.Exif | None:
    from PIL import Image

    if photo.make is None and photo.taken_at is None:
        return None
    exif = Image.Exif()
    if photo.make is not None:
        exif[_MAKE] = photo.make
        exif[_MODEL] = photo.model or ""
    exif[_SOFTWARE] = "pixsearch demo"
    if photo.taken_at is not None:
        stamp = photo.taken_at.strftime("%Y:%m:%d %H:%M:%S")
        exif[_DATETIME] = stamp
        sub = exif.get_ifd(_EXIF_IFD)
        sub[_DATETIME_ORIGINAL] = stamp
        sub[_DATETIME_DIGITIZED] = stamp
    if photo.gps is not None:
        lat, lon = photo.gps
        gps = exif.get_ifd(_GPS_IFD)
        gps[1] = "N" if lat >= 0 else "S"
        gps[2] = _dms(abs(lat))
        gps[3] = "E" if lon >= 0 else "W"
        gps[4] = _dms(abs(lon))
    return exif


def _dms(value: float) -> tuple[float, float, float]:
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round((value - degrees - minutes / 60) * 3600, 3)
    return (float(degrees), float(minutes), seconds)
