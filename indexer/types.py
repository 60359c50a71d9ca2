"""Types shared across the boundaries of the core."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

#: (n, d) float32, one L2-normalised row per item.
Embeddings = npt.NDArray[np.float32]


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
class Failure:
    """A file that could not be indexed, and why."""

    path: str
    error: str


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
