"""The home as a request sees it: the model row, the FAISS index (reloaded when the
database's generation moves on, in the background for a large one) and a background sample."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from indexer.db import Model
from indexer.encoder import ClipEncoder
from indexer.errors import InvalidInput
from indexer.home import Home
from indexer.lookups import id_range
from indexer.types import Embeddings
from indexer.vecstore import VectorStore, read_ahead
from indexer.vectors import VectorIndex
from search.query_vectors import QueryVectors

log = logging.getLogger(__name__)


#: Images scored per query to learn its background level (see `rerank.background_level`).
BACKGROUND_SAMPLE = 2000
#: Seconds a background sample is kept while the collection does not change.
BACKGROUND_TTL = 300.0
#: Indexes at least this large are reloaded in a background thread.
BACKGROUND_RELOAD = 100_000


@dataclass(frozen=True, slots=True)
class RequestState:
    """What one request needs of the home, resolved once: model, generation, index, sample."""

    model: Model
    index: VectorIndex
    generation: int
    background: Embeddings
    store: VectorStore | None = None


class IndexState(QueryVectors):
    """Keeps one home's model, index and background sample current; safe to share between
    threads."""

    def __init__(self, home: Home, encoder: ClipEncoder) -> None:
        super().__init__(home, encoder)
        self._index: VectorIndex | None = None
        self._generation = -1
        self._lock = threading.Lock()
        self._background: tuple[float, int, Embeddings] | None = None

    def model(self) -> Model:
        """The stored model the encoder writes to; an error if nothing is indexed with it."""
        row = self._model_row()
        if row is None:
            raise InvalidInput(
                f"nothing is indexed with model {self.encoder.key} in {self.home.path} yet: "
                "run `pixsearch index FOLDER` first"
            )
        return row

    def _model_row(self) -> Model | None:
        # One query gives the model's id, dimension and generation.
        return self.home.model_row(self.encoder.key) if self.home.exists() else None

    def index(self) -> VectorIndex:
        """The current FAISS index; reloaded (or rebuilt) when the database has moved on."""
        return self._index_for(self.model())

    def _index_for(self, model: Model) -> VectorIndex:
        """The index for the model row just read (its generation says whether to reload).

        The new index is built first and then swapped in: queries in flight keep the old one.
        A large index is reloaded in the background while queries go on with the old one.
        """
        generation = int(model.generation or 0)
        current = self._index
        if current is not None and generation == self._generation:
            return current
        if current is None or len(current) < BACKGROUND_RELOAD:
            with self._lock:
                if self._index is None or generation != self._generation:
                    self._load(model, generation)
                assert self._index is not None
                return self._index
        if self._lock.acquire(blocking=False):
            threading.Thread(
                target=self._reload_in_background,
                args=(model, generation),
                daemon=True,
                name="pixsearch-reload",
            ).start()
        return current

    def _state(self) -> RequestState | None:
        """Model, index and background sample for one request; None if nothing is indexed."""
        model = self._model_row()
        if model is None:
            return None
        index = self._index_for(model)
        generation = int(model.generation or 0)
        background = self._background_sample(model, generation)
        return RequestState(model, index, generation, background, self._store)

    def _load(self, model: Model, generation: int) -> None:
        fresh = self.home.load_index(model.name, model.id, model.dim)
        store = self.home.vector_store(model.name, model.id, model.dim)
        # A new store object comes with every reload (each indexing checkpoint); the file is
        # read into the page cache only when it is another file, not again at each one.
        # Before the vectors, the on-disk lists every query scans a quarter of (0.7 GB at 10M:
        # until cached, queries took 100-150 ms); after them, the image rows (a sixth of the
        # vectors' size).
        if store is not None and (self._store is None or store.path != self._store.path):
            read_ahead([*fresh.mapped_files, store.path], then=self.home.warm_images)
        self._index, self._store, self._generation = fresh, store, generation

    def _rebuild(self, model: Model, why: str) -> VectorIndex:
        """A fresh index from the stored embeddings, in place of one that failed."""
        with self._lock:
            fresh = self.home.load_index(model.name, model.id, model.dim, rebuild=why)
            self._index, self._generation = fresh, int(model.generation or 0)
        return fresh

    def _reload_in_background(self, model: Model, generation: int) -> None:
        try:
            self._load(model, generation)
        except Exception:  # the old index keeps answering; the next query tries again
            log.exception("reloading the index failed")
        finally:
            self._lock.release()

    def _background_sample(self, model: Model, generation: int) -> Embeddings:
        """A fixed random sample of the collection's vectors (all of a small collection)."""
        now = time.monotonic()
        cached = self._background
        if cached is not None and (
            cached[1] == generation
            # A large sample is costly to redraw while an indexing run changes the collection
            # with every batch; a partial one (a small collection, sampled whole) is not.
            or (now - cached[0] < BACKGROUND_TTL and len(cached[2]) >= BACKGROUND_SAMPLE // 2)
        ):
            return cached[2]
        lo, hi = id_range(self.home) or (None, None)
        if lo is None or hi is None:
            vecs = np.zeros((0, model.dim), np.float32)
        elif hi - lo + 1 <= BACKGROUND_SAMPLE:
            _, vecs = self.home.stored_vectors(model.id, model.dim, np.arange(lo, hi + 1))
        else:
            rng = np.random.default_rng(0)
            pick = np.unique(rng.integers(lo, hi + 1, size=BACKGROUND_SAMPLE))
            _, vecs = self.stored(model, pick)
        self._background = (now, generation, vecs)
        return vecs
