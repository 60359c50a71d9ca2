"""Query vectors: texts (cached), indexed images, image files and uploads, combined into one."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict

import numpy as np

from indexer.db import Model
from indexer.encoder import ClipEncoder
from indexer.errors import InvalidInput, NotFound
from indexer.home import Home
from indexer.imageio import DRAFT_OVERSAMPLE, decode, max_file_bytes, read_file
from indexer.types import Embeddings
from indexer.vecstore import VectorStore
from indexer.vectors import Ids
from search.query import Query, unit

log = logging.getLogger(__name__)

#: Weight of the negative texts subtracted from the query vector.
NEGATIVE_WEIGHT = 0.5


class QueryVectors:
    """Turns what a query names into one unit vector; safe to share between threads."""

    def __init__(self, home: Home, encoder: ClipEncoder) -> None:
        self.home = home
        self.encoder = encoder
        self.settings = home.settings
        self._store: VectorStore | None = None  # set by a searcher that loads one
        self._texts: OrderedDict[str, Embeddings] = OrderedDict()
        self._texts_limit = 512
        self._text_lock = threading.Lock()

    def model(self) -> Model:
        """The stored model whose vectors indexed images have (the searcher's)."""
        raise NotImplementedError

    def stored(self, model: Model, ids: Ids) -> tuple[Ids, Embeddings]:
        """(ids found, their vectors): from the float16 vector file of a large
        collection once loaded (rows it lacks, from the database), else from the database."""
        store = self._store
        if store is None or store.dim != model.dim:
            return self.home.stored_vectors(model.id, model.dim, ids)
        found, vecs = store.get(ids)
        if len(found) == len(ids):
            return found, vecs
        rest, more = self.home.stored_vectors(model.id, model.dim, np.setdiff1d(ids, found))
        return np.concatenate([found, rest]), np.concatenate([vecs, more])

    def embed_text(self, text: str) -> Embeddings:
        """A text's embedding; repeated queries hit a small cache."""
        text = text.strip()
        with self._text_lock:
            vec = self._texts.get(text)
            if vec is not None:
                self._texts.move_to_end(text)
                return vec
        vec = self.encoder.embed_texts([text])[0]
        self._remember(text, vec)
        return vec

    def prime_texts(self, texts: list[str], batch: int = 256) -> None:
        """Embed many texts in batches (an evaluation's queries) and keep them all cached."""
        self._texts_limit = max(self._texts_limit, len(texts) + 512)
        todo = [t for t in dict.fromkeys(t.strip() for t in texts) if t not in self._texts]
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            for text, vec in zip(part, self.encoder.embed_texts(part), strict=True):
                self._remember(text, vec)

    def _remember(self, text: str, vec: Embeddings) -> None:
        with self._text_lock:
            self._texts[text] = vec
            while len(self._texts) > self._texts_limit:
                self._texts.popitem(last=False)

    def vector_of(
        self, image: int | str, model: Model | None = None
    ) -> tuple[Embeddings, int | None]:
        """The embedding of an indexed id, an indexed path, or any image file (embedded now)."""
        model = model or self.model()
        if isinstance(image, int) or (image.isdigit() and not os.path.exists(image)):
            image_id = int(image)
            ids, vecs = self.stored(model, np.asarray([image_id], np.int64))
            if not len(ids):
                raise NotFound(f"no indexed image has id {image_id}")
            return vecs[0], image_id
        path = os.path.abspath(os.path.expanduser(image))
        row = self.home.image_by_path(path)
        if row is not None:
            ids, vecs = self.stored(model, np.asarray([row.id], np.int64))
            if len(ids):
                return vecs[0], row.id
        limit = self.settings.max_image_pixels
        return self.embed_image_bytes(read_file(path, max_file_bytes(limit)), limit), None

    def embed_image_bytes(self, data: bytes, max_pixels: int | None = None) -> Embeddings:
        """Embed an image that is not in the collection: an upload (under the upload pixel
        limit unless told otherwise) or a file named by path."""
        limit = max_pixels or self.settings.max_upload_pixels
        side = self.encoder.preprocess.size * DRAFT_OVERSAMPLE
        img, _ = decode(data, max_pixels=limit, min_side=side)
        return self.encoder.embed_images([img])[0]

    def query_vector(self, q: Query, model: Model | None = None) -> Embeddings:
        """One unit vector for the query: text and image combined, negatives pushed away."""
        parts: list[Embeddings] = []
        if q.text is not None and q.text.strip():
            parts.append(self.embed_text(q.text.strip()))
        image_vec = q.image_vector
        if image_vec is None and q.image_id is not None:
            image_vec, _ = self.vector_of(q.image_id, model)
        if image_vec is not None:
            parts.append(unit(image_vec))
        if not parts:
            raise InvalidInput("a query needs a text or an image")
        if len(parts) == 2:
            wt, wi = q.weights or (0.5, 0.5)
            if wt < 0 or wi < 0 or wt + wi <= 0:
                raise InvalidInput("weights must be non-negative and not both zero")
            top = max(wt, wi)  # only the ratio counts; huge weights must not overflow
            vec = (wt / top) * parts[0] + (wi / top) * parts[1]
        else:
            vec = parts[0]
        negatives = [n.strip() for n in q.negative if n.strip()]
        if negatives:
            vec = unit(vec) - NEGATIVE_WEIGHT * np.mean(
                [self.embed_text(n) for n in negatives], axis=0
            )
        return unit(vec)
