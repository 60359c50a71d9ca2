"""Text-to-image and image-to-image search over a home's FAISS index."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from indexer.db import Model
from indexer.encoder import ClipEncoder
from indexer.errors import InvalidInput, NotFound
from indexer.home import Home
from indexer.imageio import decode, read_file
from indexer.types import Embeddings
from indexer.vectors import VectorIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result."""

    id: int
    path: str
    score: float
    width: int
    height: int
    taken_at: datetime | None

    def to_dict(self) -> dict[str, object]:
        """The JSON shape of a hit."""
        return {
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
        }


class Searcher:
    """Answers queries; reloads the index when the database has moved on."""

    def __init__(self, home: Home, encoder: ClipEncoder) -> None:
        self.home = home
        self.encoder = encoder
        self._index: VectorIndex | None = None
        self._generation = -1
        self._lock = threading.Lock()

    def model(self) -> Model:
        """The stored model the encoder writes to; an error if nothing is indexed with it."""
        row = self.home.model_row(self.encoder.key) if self.home.exists() else None
        if row is None:
            raise InvalidInput(
                f"nothing is indexed with model {self.encoder.key} in {self.home.path} yet: "
                "run `pixsearch index FOLDER` first"
            )
        return row

    def index(self) -> VectorIndex:
        """The current FAISS index (loaded, or rebuilt if stale)."""
        model = self.model()
        generation = self.home.generation(model.id)
        with self._lock:
            if self._index is None or generation != self._generation:
                self._index = self.home.load_index(model.name, model.id, model.dim)
                self._generation = generation
            return self._index

    def text(self, query: str, k: int = 20) -> list[Hit]:
        """Images best matching a text."""
        if not query.strip():
            raise InvalidInput("the query text is empty")
        self.model()
        return self.by_vector(self.encoder.embed_texts([query])[0], k)

    def vector_of(self, image: int | str) -> tuple[Embeddings, int | None]:
        """The embedding of an indexed id, an indexed path, or any image file (embedded now)."""
        model = self.model()
        if isinstance(image, int) or (
            isinstance(image, str) and image.isdigit() and not os.path.exists(image)
        ):
            image_id = int(image)
            ids, vecs = self.home.stored_vectors(model.id, model.dim, np.asarray([image_id]))
            if not len(ids):
                raise NotFound(f"no indexed image has id {image_id}")
            return vecs[0], image_id
        path = os.path.abspath(os.path.expanduser(image))
        row = self.home.image_by_path(path)
        if row is not None:
            ids, vecs = self.home.stored_vectors(model.id, model.dim, np.asarray([row.id]))
            if len(ids):
                return vecs[0], row.id
        img, _ = decode(read_file(path), max_pixels=self.home.settings.max_image_pixels)
        return self.encoder.embed_images([img])[0], None

    def similar(self, image: int | str, k: int = 20) -> list[Hit]:
        """Images most like an indexed image (its own first hit) or an image file."""
        vec, _ = self.vector_of(image)
        return self.by_vector(vec, k)

    def by_vector(self, vector: Embeddings, k: int) -> list[Hit]:
        """The k nearest images to a unit vector, best first."""
        if k < 1:
            raise InvalidInput("k must be at least 1")
        index = self.index()
        if not len(index):
            return []
        scores, ids = index.search(vector.reshape(1, -1), k)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        rows = self.home.images_by_id([i for i, _ in pairs])
        return [
            Hit(i, r.path, s, r.width, r.height, r.taken_at)
            for i, s in pairs
            if (r := rows.get(i)) is not None
        ]
