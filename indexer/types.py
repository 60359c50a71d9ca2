"""Types shared across the boundaries of the core."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

#: (n, d) float32, one L2-normalised row per item.
Embeddings = npt.NDArray[np.float32]

#: A batch of prepared pictures: (n, S, S, 3) uint8, already resized and cropped.
Pixels = npt.NDArray[np.uint8]

#: Why a file must be read: not indexed yet, changed on disk, or no embedding for this model.
Kind = Literal["new", "changed", "reembed"]


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """What reading an image file tells us, besides its pixels."""

    width: int
    height: int
    format: str
    taken_at: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None


@dataclass(frozen=True, slots=True)
class FileEntry:
    """An image file found on disk, with what is needed to tell if it changed."""

    path: str
    size: int
    mtime_ns: int


@dataclass(slots=True)
class Job:
    """A file that must be read: new, changed, or lacking an embedding for this model."""

    entry: FileEntry
    kind: Kind
    row_id: int | None = None


@dataclass(slots=True)
class Prepared:
    """A job after the read stage: hashed, and decoded unless its content is known."""

    job: Job
    content_hash: str
    meta: ImageMeta | None = None
    pixels: Pixels | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A file that could not be indexed, and why; `keep`: the path (a file, or a folder and
    everything under it) could not be looked at, so what was indexed there stays."""

    path: str
    error: str
    keep: bool = False


@dataclass(slots=True)
class IndexReport:
    """Summary of one indexing run."""

    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    removed: int = 0
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images embedded or re-embedded per second of the run."""
        done = self.added + self.updated
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """The JSON summary printed by `pixsearch index --json`."""
        return {
            "scanned": self.scanned,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "moved": self.moved,
            "removed": self.removed,
            "failed": [{"path": f.path, "error": f.error} for f in self.failed],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
        }


@dataclass(frozen=True, slots=True)
class Filters:
    """Metadata conditions; every one given must hold."""

    taken_after: date | datetime | None = None
    taken_before: date | datetime | None = None
    path_prefix: str | None = None
    camera: str | None = None
    min_width: int | None = None
    min_height: int | None = None
    format: str | None = None

    def active(self) -> bool:
        """Whether any condition is set."""
        return any(getattr(self, f) not in (None, "") for f in self.__slots__)
