"""What a query asks for, and what comes back: small frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np

from indexer.types import Embeddings, Filters

__all__ = ["RERANK_MODES", "Filters", "Hit", "Query", "RerankMode", "SearchResult", "unit"]

#: none: the index's order; standard: exact re-score + duplicate collapse; mmr: standard plus
#: maximal marginal relevance; generative: standard plus the captioner's likelihood of the text.
RerankMode = Literal["none", "standard", "mmr", "generative"]
RERANK_MODES: tuple[RerankMode, ...] = ("none", "standard", "mmr", "generative")
#: relevance: best first; -date: the matches newest first; date: oldest first.
SortOrder = Literal["relevance", "-date", "date"]


@dataclass(frozen=True, slots=True)
class Query:
    """A search: text and/or an image, pushed away from negatives, filtered and reranked."""

    text: str | None = None
    image_id: int | None = None
    image_vector: Embeddings | None = field(default=None, compare=False, hash=False)
    weights: tuple[float, float] | None = None  # (text, image) when both are given
    negative: tuple[str, ...] = ()
    k: int = 20
    offset: int = 0
    filters: Filters = Filters()
    rerank: RerankMode = "standard"
    mmr_lambda: float = 0.7
    min_score: float | None = None
    cutoff: bool = True
    captions: bool = False
    sort: SortOrder = "relevance"


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result."""

    id: int
    path: str
    score: float
    width: int
    height: int
    taken_at: datetime | None
    content_hash: str = ""
    caption: str | None = None
    #: The file's modification time: the photo's date when it has no capture date.
    file_time: datetime | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON shape of a hit (the CLI's; the API adds thumbnail_url); `caption` only
        when the hit was captioned."""
        out: dict[str, object] = {
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
        }
        if self.caption is not None:
            out["caption"] = self.caption
        return out


@dataclass(frozen=True, slots=True)
class SearchResult:
    """A page of hits, best first, with how long it took and the score cut-off applied."""

    hits: list[Hit]
    took_ms: float
    cutoff: float | None = None
    #: Why something asked for is missing or was done differently (one line), if anything.
    notice: str | None = None
    #: The automatic cut-off emptied the first page: matches exist, none scores well.
    cut_off: bool = False


def unit(v: np.ndarray) -> Embeddings:
    """v scaled to unit length (float32)."""
    v = np.asarray(v, np.float32)
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else v
