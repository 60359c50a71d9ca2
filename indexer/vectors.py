"""The FAISS index: derived from the stored embeddings, chosen by collection size, saved
atomically, checked on open.

Index kinds, picked by the number of vectors n (thresholds in `Policy`):

``SQfp16``
    n <= ``exact_limit`` (50,000): exhaustive search over float16 copies of the vectors:
    half the memory of float32, and on FAISS 1.14+ faster than its float32 flat scan for a
    single query. Scores are within ~1e-3 of the exact ones, so a few extra candidates
    re-scored from the stored float32 embeddings give the exact top k. The scan costs
    ~0.12 us per vector on one core (50k: 6 ms, 200k: 25 ms), hence the limit: a query's
    whole budget is ~50 ms on 2 cores, ~20-30 of it encoding the text.
``IVF{nlist},SQ8``
    ``exact_limit`` < n <= ``pq_limit`` (4,000,000): inverted file with 8-bit scalar
    quantisation (a quarter of float32), nlist ~ 2 sqrt(n) spherical k-means lists, and
    ``nprobe`` tuned at build time on sample queries for recall@10 >= ``target_recall``
    after exact re-scoring of `candidates(k)` hits.
``IVF{nlist},PQ{m}``
    n > ``pq_limit``: the same with product quantisation (dim/8 bytes per vector) and a
    larger over-fetch.

Older files holding an exact float32 flat index (``Flat``) still open and work.

New vectors are added to whatever index is loaded (an IVF index assigns them to its trained
lists). `VectorIndex.wants_rebuild` says when the collection has outgrown (or shrunk below)
its index; the indexing run then rebuilds it from the stored embeddings before it saves, and
a searcher that opens a valid but ill-suited index rebuilds it in the background
(`rebuild_async`): searches keep using the old structure until the new one is swapped in,
and changes made meanwhile are replayed onto it. Saved files are replaced atomically.

The searcher re-scores: it asks for `candidates(k)` hits, reads their float32 embeddings
from the database and keeps the k best by exact inner product (`rescore`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer import indexfile
from indexer.errors import IndexDamaged
from indexer.faiss_ops import Ids as Ids  # re-exported
from indexer.faiss_ops import Scores as Scores  # re-exported
from indexer.faiss_ops import (
    _add,
    _faiss,
    _family,
    _new_exact,
    _pq_subquantizers,
    _remove,
    _train_ivf,
    ivf_lists,
    tune_nprobe,
)
from indexer.faiss_ops import exact_search as exact_search  # re-exported
from indexer.faiss_ops import rescore as rescore  # re-exported
from indexer.indexfile import IndexState
from indexer.indexfile import atomic_write as atomic_write  # re-exported
from indexer.indexfile import atomic_write_with as atomic_write_with  # re-exported
from indexer.types import Embeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Policy:
    """When each index kind is used, and what the approximate ones are tuned for."""

    #: Up to this many vectors, exhaustive (exact) search; above it, an IVF index.
    exact_limit: int = 50_000
    #: Above this many vectors, product quantisation instead of 8-bit scalar quantisation.
    pq_limit: int = 4_000_000
    #: An IVF index is rebuilt once the collection grew or shrank by this factor since it
    #: was trained (its list count no longer fits).
    growth: float = 4.0
    #: recall@10 after exact re-scoring, on sample queries, that `nprobe` is tuned for. The
    #: scan is cheap next to encoding the query text (1M vectors: ~2 ms at nprobe 67, 0.98;
    #: ~4 ms at 128, 0.994), so the target is high, leaving a margin for harder queries.
    target_recall: float = 0.99
    #: `nprobe` never goes above this fraction of the lists.
    max_probe_fraction: float = 0.25
    #: Queries unlike the indexed vectors probe this many times the tuned lists. Text
    #: queries are such queries for an index of image embeddings (CLIP's modality gap: a
    #: text's nearest images lie in more lists than an image's). Synthetic 1M worst case
    #: (a random-weights text tower): recall@10 0.887 at the tuned 96 lists, 0.968 at 384,
    #: for +3.4 ms a query (benchmarks/bench_query.py).
    unlike_probe_factor: float = 4.0
    #: Sample queries used to tune `nprobe`.
    tuning_queries: int = 200


#: The policy used when none is given (tests replace it to exercise small thresholds).
DEFAULT_POLICY = Policy()


def _policy(policy: Policy | None) -> Policy:
    return policy if policy is not None else DEFAULT_POLICY


def choose_kind(n: int, dim: int, policy: Policy | None = None) -> str:
    """The index kind suited to a collection of n vectors."""
    p = _policy(policy)
    if n <= p.exact_limit:
        return "SQfp16"
    nlist = min(ivf_lists(n), max(1, n // 8))  # only tiny test policies hit the second term
    if n <= p.pq_limit:
        return f"IVF{nlist},SQ8"
    return f"IVF{nlist},PQ{_pq_subquantizers(dim)}"


class VectorIndex:
    """Inner-product FAISS index over unit vectors, ids = image row ids.

    Mutations (add, remove, the swap after a rebuild, save) hold a lock; searches do not, as
    one VectorIndex is either written (by an indexing run) or searched (by a searcher).
    """

    def __init__(self, dim: int, index: Any = None, *, built: int = 0) -> None:
        self.dim = dim
        self.index = index if index is not None else _new_exact(dim)
        if hasattr(self.index, "parallel_mode"):
            # Threads split one query's lists (FAISS's default splits the queries, leaving a
            # single query on one core): 1M vectors, 384 lists, 2 cores: 7.8 -> 4.4 ms.
            self.index.parallel_mode = 1
        self.built = built
        self._lock = threading.RLock()
        self._journal: list[tuple[str, Ids, Embeddings | None]] | None = None
        self._thread: threading.Thread | None = None

    # -- what it is ---------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The index structure, in FAISS index_factory style: SQfp16, IVF2048,SQ8, ..."""
        index = self.index
        fam = _family(index)
        if fam == "flat32":
            return "Flat"
        if fam in ("flat16", "flat8"):
            return "SQfp16" if fam == "flat16" else "SQ8"
        if fam == "sq8":
            return f"IVF{index.nlist},SQ8"
        if fam == "pq":
            return f"IVF{index.nlist},PQ{index.pq.M}"
        return fam

    @property
    def exact(self) -> bool:
        """Whether the index's scores are exact (float32 exhaustive search)."""
        return _family(self.index) == "flat32"

    @property
    def nprobe(self) -> int:
        """IVF lists searched per query (0 for exhaustive kinds)."""
        return int(self.index.nprobe) if hasattr(self.index, "nprobe") else 0

    def candidates(self, k: int) -> int:
        """How many hits to fetch so that exact re-scoring of them finds the true top k."""
        fam = _family(self.index)
        if fam == "flat32":
            return k
        if fam == "flat16":
            return k + max(8, k // 4)
        if fam == "pq":
            return max(10 * k, k + 100)
        return max(3 * k, k + 30)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # -- changes ------------------------------------------------------------------------------
    def add(self, ids: Ids, vectors: Embeddings) -> None:
        """Add vectors under the given ids (an IVF index replaces ids it already holds)."""
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, np.int64)
        vecs = np.ascontiguousarray(vectors, np.float32).reshape(len(ids), self.dim)
        with self._lock:
            _add(self.index, ids, vecs)
            if self._journal is not None:
                self._journal.append(("add", ids.copy(), vecs.copy()))

    def remove(self, ids: Ids) -> None:
        """Remove the given ids (absent ones are ignored)."""
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, np.int64)
        with self._lock:
            _remove(self.index, ids)
            if self._journal is not None:
                self._journal.append(("remove", ids.copy(), None))

    # -- search -------------------------------------------------------------------------------
    def search(self, queries: Embeddings, k: int, *, unlike: bool = False) -> tuple[Scores, Ids]:
        """The k best (scores, ids) per query row by the index's own scores; missing slots
        have id -1. For the exact top k, search `candidates(k)` and `rescore`.

        `unlike`: the queries are unlike the indexed vectors (texts against images), so an
        IVF index probes more lists (`Policy.unlike_probe_factor`). A failure inside FAISS
        is an `IndexDamaged`.
        """
        with _damage_reported():
            return self._search(queries, k, unlike)

    def _search(self, queries: Embeddings, k: int, unlike: bool) -> tuple[Scores, Ids]:
        index = self.index  # a concurrent swap replaces the reference, never mutates it
        n = int(index.ntotal)
        k = max(1, min(k, n)) if n else 1
        q = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        if not hasattr(index, "nprobe"):
            return index.search(q, k)  # type: ignore[no-any-return]
        return _search_ivf(index, q, k, self._probes(index, unlike))

    def search_subset(
        self, queries: Embeddings, k: int, ids: Ids, *, unlike: bool = False
    ) -> tuple[Scores, Ids]:
        """Like `search`, restricted to the given ids (a metadata filter's result).

        An IVF index probes proportionally more lists the smaller the allowed share is, so
        that about as many allowed candidates are seen as by an unfiltered search.
        """
        with _damage_reported():
            return self._search_subset(queries, k, ids, unlike)

    def _search_subset(
        self, queries: Embeddings, k: int, ids: Ids, unlike: bool
    ) -> tuple[Scores, Ids]:
        faiss = _faiss()

        index = self.index
        n = int(index.ntotal)
        allowed = np.ascontiguousarray(ids, np.int64)
        q = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        if not n or not len(allowed):
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = max(1, min(k, len(allowed)))
        sel = faiss.IDSelectorBatch(allowed)
        if not hasattr(index, "nprobe"):
            return index.search(q, k, params=faiss.SearchParameters(sel=sel))  # type: ignore[no-any-return]
        share = min(1.0, len(allowed) / n)
        return _search_ivf(index, q, k, math.ceil(self._probes(index, unlike) / share), sel)

    @staticmethod
    def _probes(index: Any, unlike: bool) -> int:
        """The tuned nprobe, or for unlike queries that times the policy's factor within its
        cap (never below the tuned)."""
        tuned = max(1, int(index.nprobe))
        if not unlike:
            return tuned
        policy = _policy(None)
        cap = max(tuned, int(policy.max_probe_fraction * int(index.nlist)))
        return min(cap, math.ceil(tuned * policy.unlike_probe_factor))

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def build(
        cls, dim: int, ids: Ids, vectors: Embeddings, policy: Policy | None = None
    ) -> VectorIndex:
        """A fresh index of the kind suited to this many vectors, holding them."""
        p = _policy(policy)
        ids = np.ascontiguousarray(ids, np.int64)
        vecs = np.ascontiguousarray(vectors, np.float32).reshape(len(ids), dim)
        n = len(ids)
        kind = choose_kind(n, dim, p)
        started = time.perf_counter()
        if kind == "SQfp16":
            vi = cls(dim, built=n)
            vi.add(ids, vecs)
            return vi
        index = _train_ivf(kind, dim, vecs)
        _add(index, ids, vecs, replace_ids=False)
        vi = cls(dim, index, built=n)
        trained = time.perf_counter() - started
        recall = tune_nprobe(
            index,
            ids,
            vecs,
            want=vi.candidates(10),
            target=p.target_recall,
            max_fraction=p.max_probe_fraction,
            queries=p.tuning_queries,
        )
        log.info(
            "built %s over %d vectors in %.1fs (+%.1fs tuning): nprobe %d, recall@10 %.3f",
            kind,
            n,
            trained,
            time.perf_counter() - started - trained,
            vi.nprobe,
            recall,
        )
        return vi

    # -- rebuilding ---------------------------------------------------------------------------
    def wants_rebuild(self, policy: Policy | None = None) -> str | None:
        """Why the index no longer suits its collection, or None if it does (or a rebuild
        is already running)."""
        if self.rebuilding:
            return None
        p = _policy(policy)
        n = len(self)
        fam = _family(self.index)
        if fam in ("flat32", "flat16"):
            if n > p.exact_limit:
                return f"{n} vectors are over the exact-search limit of {p.exact_limit}"
            return None
        if fam not in ("sq8", "pq"):
            return f"unexpected index structure {fam}"
        if n <= p.exact_limit // 2:
            return f"{n} vectors are few enough for exact search"
        if fam == "sq8" and n > p.pq_limit:
            return f"{n} vectors are over the scalar-quantisation limit of {p.pq_limit}"
        if fam == "pq" and n <= p.pq_limit // 2:
            return f"{n} vectors are few enough for scalar quantisation"
        built = self.built or n
        if n > built * p.growth or n * p.growth < built:
            return f"the collection went from {built} to {n} vectors since it was trained"
        return None

    @property
    def rebuilding(self) -> bool:
        """Whether a background rebuild is running."""
        return self._journal is not None

    def replace_with(self, other: VectorIndex) -> None:
        """Take over another index's structure (a rebuilt one), in place."""
        with self._lock:
            self.index = other.index
            self.built = other.built

    def rebuild_async(
        self,
        load: Callable[[], tuple[Ids, Embeddings]],
        done: Callable[[VectorIndex, bool], None] | None = None,
        policy: Policy | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> threading.Thread | None:
        """Rebuild from `load()` in a background thread, then swap the new structure in.

        Searches meanwhile use the current structure; adds and removals made meanwhile are
        replayed onto the new one before the swap. `done(self, clean)` runs after the swap;
        `clean` is False when changes were replayed (the caller's snapshot may then be older
        than the index). `on_exit()` runs last, whatever happened. Returns None if a rebuild
        is already running.
        """
        with self._lock:
            if self._journal is not None:
                return None
            self._journal = []

        def work() -> None:
            try:
                ids, vecs = load()
                fresh = VectorIndex.build(self.dim, ids, vecs, policy)
                with self._lock:
                    journal = self._journal or []
                    for op, op_ids, op_vecs in journal:
                        _remove(fresh.index, op_ids)  # replays are idempotent
                        if op == "add" and op_vecs is not None:
                            _add(fresh.index, op_ids, op_vecs, replace_ids=False)
                    self.index = fresh.index
                    self.built = fresh.built
                    self._journal = None
                log.info("index rebuilt as %s (%d changes replayed)", self.kind, len(journal))
                if done is not None:
                    done(self, not journal)
            except Exception:
                log.exception("background rebuild of the FAISS index failed")
            finally:
                with self._lock:
                    self._journal = None
                if on_exit is not None:
                    on_exit()

        thread = threading.Thread(target=work, name="pixsearch-index-rebuild", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def wait_rebuild(self, timeout: float | None = None) -> None:
        """Wait for a background rebuild (if any) to finish."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- files --------------------------------------------------------------------------------
    def save(self, path: Path, generation: int) -> None:
        """Save atomically, with the database generation it reflects in the same file."""
        with self._lock:
            index = self.index
            state = IndexState(
                generation=generation,
                count=int(index.ntotal),
                dim=self.dim,
                kind=self.kind,
                built=self.built,
                nprobe=self.nprobe,
            )
            indexfile.save(path, index, state)

    @classmethod
    def open(
        cls, path: Path, dim: int, generation: int, count: int
    ) -> tuple[VectorIndex | None, str]:
        """Load a saved index if it is intact and matches the database; else (None, why not)."""
        index, state, why = indexfile.load(path, generation)
        if index is None or state is None:
            return None, why
        if index.ntotal != count or index.d != dim:
            return None, f"holds {index.ntotal} vectors of dimension {index.d}, expected {count}"
        if _family(index) not in ("flat32", "flat16", "sq8", "pq"):
            return None, f"unexpected index structure {type(index).__name__}"
        vi = cls(dim, index, built=state.built or int(index.ntotal))
        if state.nprobe and hasattr(index, "nprobe"):
            index.nprobe = state.nprobe
        return vi, "ok"


def _search_ivf(
    index: Any, q: Embeddings, k: int, nprobe: int, sel: Any = None
) -> tuple[Scores, Ids]:
    """An IVF search probing `nprobe` lists, then every list if those held fewer than k
    (eligible) vectors: a small or lopsided index, a large k, or allowed ids far from the
    query. So k come back whenever k exist."""
    faiss = _faiss()

    nlist = int(index.nlist)
    extra = {"sel": sel} if sel is not None else {}
    probes = min(nprobe, nlist)
    scores, ids = index.search(q, k, params=faiss.SearchParametersIVF(nprobe=probes, **extra))
    if probes < nlist and int((ids >= 0).sum(axis=1).min()) < k:
        params = faiss.SearchParametersIVF(nprobe=nlist, **extra)
        scores, ids = index.search(q, k, params=params)
    return scores, ids


@contextmanager
def _damage_reported() -> Iterator[None]:
    """FAISS failing inside a search (a damaged structure) as an `IndexDamaged`."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise IndexDamaged(f"the FAISS index failed while searching ({reason})") from exc


# -- FAISS helpers ----------------------------------------------------------------------------
def with_policy(**changes: Any) -> Policy:
    """The default policy with some fields changed."""
    return replace(DEFAULT_POLICY, **changes)
