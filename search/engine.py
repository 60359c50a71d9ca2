"""Answering queries: combine the query, retrieve candidates, re-score, rerank, cut, page."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from indexer.browse import file_time, order_by_date
from indexer.encoder import ClipEncoder
from indexer.errors import IndexDamaged, InvalidInput
from indexer.filters import Allowed, allowed, undated_notice
from indexer.home import Home
from indexer.types import Embeddings
from indexer.vectors import Ids, VectorIndex
from search import rerank
from search.captions import CaptionService
from search.index_state import IndexState, RequestState
from search.query import Hit, Query, SearchResult

log = logging.getLogger(__name__)

#: Candidates retrieved per result wanted, before re-scoring and reranking.
POOL_FACTOR = 4
POOL_EXTRA = 40
#: A filter allowing at most this share of the collection searches only its ids (an id
#: selector); a broader one over-fetches from the whole index and drops what it excludes.
SELECTIVE = 0.2
#: Matches sorted by date: at most this many of the best (the cut-off ends most lists sooner;
#: the rerank scores 4x as many candidates, and its duplicate collapse grows with the square).
DATE_SORT_POOL = 400
#: Rows of vectors kept with cached rankings (later pages, captions), all entries together.
PAGE_CACHE_ROWS = 100_000
#: A filter allowing at most this many images is scored exactly from the vector file.
EXACT_FILTERED = 20_000
#: The first over-fetch for a broad filter asks for at most this many times the candidates
#: (its share is an estimate; later rounds ask for more if it was too low).
FIRST_FETCH_MAX = 40


def single_threaded_numpy_blas() -> None:
    """Run numpy's BLAS on one thread in this process (FAISS's own BLAS is left alone).

    A query's products are small (a few thousand rows x 512), and OpenBLAS's spinning worker
    threads fight the model's threads for the cores: on a busy 2-core machine the
    cut-off's product took 8 ms at the median instead of 0.06 ms on one thread.
    """
    from threadpoolctl import ThreadpoolController

    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and f"{os.sep}numpy" in lib.filepath:
            lib.set_num_threads(1)


@dataclass(frozen=True, slots=True)
class _Ranking:
    """A query's ranked candidates: ids and exact scores, best first, with their vectors."""

    ids: list[int]
    scores: list[float]
    vectors: Embeddings
    exhausted: bool  # every candidate there is was seen: no later page can add any
    below: int = 0  # candidates dropped for scoring under the cut-off


class Searcher(IndexState):
    """Answers queries over one home with one encoder; safe to share between threads."""

    def __init__(
        self, home: Home, encoder: ClipEncoder, captions: CaptionService | None = None
    ) -> None:
        single_threaded_numpy_blas()
        super().__init__(home, encoder)
        self.captions = captions
        self._pages: OrderedDict[tuple[object, ...], tuple[tuple[int, int], _Ranking]] = (
            OrderedDict()
        )
        self._pages_lock = threading.Lock()

    # -- the search -----------------------------------------------------------------------
    def search(self, q: Query) -> SearchResult:
        """Run a query and return one page of hits, best first."""
        started = time.perf_counter()
        if q.k < 1 or q.offset < 0:
            raise InvalidInput("k must be at least 1 and offset at least 0")
        has_text = bool(q.text and q.text.strip())
        if q.rerank == "generative" and not has_text:
            raise InvalidInput("the generative rerank needs a query text")
        notices: list[str] = []
        state = self._state()
        if state is None:
            return SearchResult([], 0.0, notice="nothing is indexed yet")
        if q.rerank == "generative" and self.captions is None:
            notices.append("the generative rerank needs a captioner; ranked without it")
        if q.filters.taken_after is not None or q.filters.taken_before is not None:
            notices.extend(undated_notice(self.home))
        vec = self.query_vector(q, state.model)
        cutoff = self._cutoff(q, vec, state.background, textual=has_text)
        # Sorted by date, the pages share one pool, so that paging is stable.
        need = q.offset + q.k if q.sort == "relevance" else DATE_SORT_POOL
        ranking = self._ranked(q, vec, state, need, cutoff)
        order: list[int] = list(range(len(ranking.ids)))
        if q.sort != "relevance":
            order = order_by_date(self.home, ranking.ids, newest_first=q.sort == "-date")
        window = order[q.offset : min(q.offset + q.k, need)]
        rows = self.home.images_by_id([ranking.ids[j] for j in window])
        keep = [j for j in window if ranking.ids[j] in rows]
        if len(keep) < len(window):  # photos gone since: this ranking is not served again
            with self._pages_lock:
                self._pages.pop(self._page_key(q, cutoff), None)
        hits = [
            Hit(
                i,
                r.path,
                ranking.scores[j],
                r.width,
                r.height,
                r.taken_at,
                r.content_hash,
                file_time=file_time(r.mtime_ns),
            )
            for j in keep
            for i, r in [(ranking.ids[j], rows[ranking.ids[j]])]
        ]
        if q.captions and self.captions is not None and hits:
            # The captioner reads each hit's own vector: the ranking's, in the hits' order.
            hits = self.captions.for_hits(hits, ranking.vectors[keep])
        took = (time.perf_counter() - started) * 1000
        return SearchResult(
            hits,
            took,
            cutoff if cutoff > -1 else None,
            notice="; ".join(notices) or None,
            # The first page is empty only because of the cut-off: the page offers the
            # closest photos anyway.
            cut_off=q.cutoff and q.offset == 0 and not ranking.ids and ranking.below > 0,
        )

    def text(self, query: str, k: int = 20) -> list[Hit]:
        """Images best matching a text (plain ranking: exact scores, no cut-off)."""
        if not query.strip():
            raise InvalidInput("the query text is empty")
        self.model()  # a command line user is told to index first, not shown "no results"
        return self.search(Query(text=query, k=k, cutoff=False)).hits

    def similar(self, image: int | str, k: int = 20) -> list[Hit]:
        """Images most like an indexed image (its own first hit) or an image file."""
        vec, _ = self.vector_of(image)
        return self.search(Query(image_vector=vec, k=k, cutoff=False, rerank="none")).hits

    def _cutoff(self, q: Query, vec: Embeddings, background: Embeddings, *, textual: bool) -> float:
        """The score a hit needs: `min_score`, and with the cut-off on, the query's own
        background level plus z spreads (z per kind of query: texts and images score on
        different scales against photos)."""
        floor = q.min_score if q.min_score is not None else -1.0
        if not q.cutoff:
            return floor
        z = self.settings.cutoff_z if textual else self.settings.cutoff_z_image
        return max(floor, rerank.auto_cutoff(background @ vec, z))

    def _ranked(
        self, q: Query, vec: Embeddings, state: RequestState, need: int, cutoff: float
    ) -> _Ranking:
        # Same query, same data: serve later pages from the ranking the first page made.
        key = self._page_key(q, cutoff)
        # A ranking is valid for the index it was made on: a query still ranking on the old
        # index when a new one is swapped in must not file its ranking under the new one.
        stamp = (state.generation, id(state.index))
        with self._pages_lock:
            cached = self._pages.get(key)
            if cached is not None and cached[0] == stamp:
                ranking = cached[1]
                if len(ranking.ids) >= need or ranking.exhausted:
                    self._pages.move_to_end(key)
                    return ranking
        ranking = self._rank(q, vec, state, need, cutoff)
        with self._pages_lock:
            self._pages[key] = (stamp, ranking)
            rows = sum(len(r.ids) for _, r in self._pages.values())
            while len(self._pages) > 1 and (len(self._pages) > 64 or rows > PAGE_CACHE_ROWS):
                _, (_, old) = self._pages.popitem(last=False)
                rows -= len(old.ids)
        return ranking

    @staticmethod
    def _page_key(q: Query, cutoff: float) -> tuple[object, ...]:
        vector = None if q.image_vector is None else q.image_vector.tobytes()
        return (
            q.text,
            q.image_id,
            vector,
            q.weights,
            q.negative,
            q.filters,
            q.rerank,
            q.mmr_lambda,
            cutoff,
        )

    def _rank(
        self, q: Query, vec: Embeddings, state: RequestState, need: int, cutoff: float
    ) -> _Ranking:
        model, index = state.model, state.index
        allows: Allowed | None = None
        if q.filters.active():
            # Past this many ids (a fifth of the collection, at most the settings' limit) the
            # candidates of an unfiltered search are tested against the filter instead: one
            # camera of three at ten million photos would read 3M ids (~1 s) per query.
            wide = max(EXACT_FILTERED, int(SELECTIVE * len(index)))
            allows = allowed(self.home, q.filters, min(wide, self.settings.filter_ids_limit))
            if allows.ids is not None and not len(allows.ids):
                return _Ranking([], [], np.zeros((0, model.dim), np.float32), True)
        # Even the plain ranking fetches what the index needs for its exact top `need`
        # (a compressed index's scores are approximate) and reports exact scores.
        # A query with text in it is unlike the image embeddings the index was tuned on.
        unlike = bool((q.text and q.text.strip()) or q.negative)
        pool = index.candidates(need, vec.reshape(1, -1), unlike=unlike)
        if q.rerank != "none":
            pool = max(pool, need * POOL_FACTOR, need + POOL_EXTRA)
        try:
            few = allows.ids if allows is not None else None
            if few is not None and state.store is not None and len(few) <= EXACT_FILTERED:
                ids, exhausted = few, True  # all of them are scored exactly below
            else:
                ids, exhausted = self._retrieve(vec, pool, index, allows, unlike)
        except IndexDamaged as exc:  # rebuilt from the stored embeddings, tried once more
            index = self._rebuild(model, str(exc))
            ids, exhausted = self._retrieve(vec, pool, index, allows, unlike)
        lexical = {} if q.rerank == "none" else self._lexical(q)
        if lexical:
            extra = np.setdiff1d(np.fromiter(lexical, np.int64), ids)
            if allows is not None:
                extra = allows.among(extra)
            ids = np.concatenate([ids, extra])
        # Exact re-score against the stored embeddings (the index may be compressed).
        found, vecs = self.stored(model, ids)
        exact = vecs @ vec
        if lexical:
            w = self.settings.lexical_weight
            exact = exact + w * np.asarray([lexical.get(int(i), 0.0) for i in found], np.float32)
        ranked = np.lexsort((found, -exact))
        order = ranked[exact[ranked] >= cutoff].tolist()  # 6,000 candidates: 1.9 -> 0.1 ms
        below = len(ranked) - len(order)
        if q.rerank != "none":
            # Only the best pool is reranked (collapse is quadratic: 2,000 took ~0.5 s).
            limit = max(need * POOL_FACTOR, need + POOL_EXTRA)
            if len(order) > limit:
                order, exhausted = order[:limit], False
            order = rerank.collapse_duplicates(order, vecs, self.settings.dedupe_threshold)
            if q.rerank == "mmr":
                order = rerank.mmr(order, vecs, exact, q.mmr_lambda, need)
            elif q.rerank == "generative" and self.captions is not None:
                order = self._generative(q, order, vecs, exact, found, need)
        return _Ranking(
            [int(found[i]) for i in order],
            [float(exact[i]) for i in order],
            np.ascontiguousarray(vecs[order]),
            exhausted,
            below=below,
        )

    def _generative(
        self, q: Query, order: list[int], vecs: Embeddings, exact: np.ndarray, found: Ids, need: int
    ) -> list[int]:
        top = order[: max(need, 20)]
        assert self.captions is not None
        loglik = self.captions.score_text([int(found[i]) for i in top], vecs[top], q.text or "")
        fused = rerank.fuse(exact[top], loglik, self.settings.generative_weight)
        return [top[j] for j in np.argsort(-fused, kind="stable")] + order[len(top) :]

    def _lexical(self, q: Query) -> dict[int, float]:
        if self.captions is None or not q.text or self.settings.lexical_weight <= 0:
            return {}
        return self.captions.keyword_ids(q.text)

    def _retrieve(
        self, vec: Embeddings, n: int, index: VectorIndex, allows: Allowed | None, unlike: bool
    ) -> tuple[Ids, bool]:
        """(candidate ids, best first by the index's own scores; whether every candidate was
        seen). Their scores are re-computed exactly from the stored embeddings.

        Fewer than `n` ids come back only when fewer than `n` images are eligible: the
        index searches every list when its probed ones hold too few (`VectorIndex.search`).
        """
        total = len(index)
        if total == 0:
            return np.zeros(0, np.int64), True
        q = vec.reshape(1, -1)
        if allows is None:
            _, ids = index.search(q, n, unlike=unlike)
            found = _valid(ids[0])
            return found, len(found) < n or n >= total
        allowed = allows.ids
        if allowed is not None and len(allowed) <= max(n, SELECTIVE * total):
            _, ids = index.search_subset(q, n, allowed, unlike=unlike)
            found = _valid(ids[0])
            return found, len(found) < n or n >= len(allowed)
        # Over-fetch from the whole index and keep what the filter allows; the first round
        # asks for as many as the filter's share of the collection says it needs (one round,
        # not two, for one camera of three), each later one for as many as the share allowed
        # so far says, and tests only the new ones.
        share = len(allowed) / total if allowed is not None else allows.share
        first = min(int(1.3 * n / share), FIRST_FETCH_MAX * n) if share else 0
        m = min(total, max(n * 2, first))
        checked, passed = np.zeros(0, np.int64), np.zeros(0, np.int64)
        while True:
            _, ids = index.search(q, m, unlike=unlike)
            got = _valid(ids[0])
            fresh = got[~np.isin(got, checked)]
            passed = np.concatenate([passed, allows.among(fresh)])
            checked = np.concatenate([checked, fresh])
            keep = got[np.isin(got, passed)]
            if len(keep) >= n:
                return keep[:n], False
            if m >= total:  # the index returned all it holds: these are all the allowed
                return keep, True
            share = max(len(keep), 1) / max(len(got), 1)
            m = min(total, max(m * 2, int(1.3 * n / share)))


def _valid(ids: np.ndarray) -> Ids:
    return ids[ids >= 0].astype(np.int64)
