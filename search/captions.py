"""Captions for search hits: stored ones first, generated on demand, never twice."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from indexer.captioners.base import Captioner, CaptionStore
from indexer.home import Home
from indexer.lookups import ids_by_content_hash
from indexer.types import Embeddings
from search.query import Hit

log = logging.getLogger(__name__)


class CaptionService:
    """Captions, caption likelihoods and caption keywords for one home and captioner.

    `clip_key` is the key of the CLIP model whose stored embeddings the methods are given.
    """

    def __init__(self, home: Home, captioner: Captioner, clip_key: str) -> None:
        self.home = home
        self.captioner = captioner
        self.store = CaptionStore(home, captioner, clip_key)

    @property
    def name(self) -> str:
        """The captioner's name."""
        return self.captioner.name

    def for_hits(self, hits: Sequence[Hit], vectors: Embeddings) -> list[Hit]:
        """The hits with their captions (generated and stored for those that had none)."""
        if not hits:
            return list(hits)
        texts = self.store.ensure([(h.content_hash, h.path) for h in hits], vectors)
        from dataclasses import replace

        return [replace(h, caption=texts.get(h.content_hash)) for h in hits]

    def score_text(self, ids: Sequence[int], vectors: Embeddings, text: str) -> np.ndarray:
        """The captioner's length-normalised log-likelihood of `text` for each image."""
        rows = self.home.images_by_id(list(ids))
        paths = [rows[i].path if i in rows else "" for i in ids]
        return self.captioner.score(paths, vectors, text)

    def keyword_ids(self, words: str) -> dict[int, float]:
        """Image ids whose stored caption matches the words, with a 0-1 strength."""
        by_hash = self.store.keyword_hits(words)
        if not by_hash:
            return {}
        return {i: by_hash[h] for i, h in ids_by_content_hash(self.home, by_hash)}
