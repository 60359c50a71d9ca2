"""The FAISS index: derived from the stored embeddings, chosen by collection size, saved
atomically, checked on open.

Which kind for which size lives in `indexer.policy`, what each kind is in `indexer.kinds`
(`indexer.ondisk` for the memory-mapped one), the file layout in `indexer.indexfile`, FAISS
primitives in `indexer.faiss_ops`. Older exact float32 flat (``Flat``) files still work.

New vectors are added to whatever index is loaded (an IVF index assigns them to its trained
lists; the on-disk kind keeps them in an in-memory delta). `VectorIndex.wants_rebuild` says
when the collection has outgrown (or shrunk below) its index; the indexing run then rebuilds
it from the stored embeddings before it saves, and a searcher that opens a valid but
ill-suited index rebuilds it in the background (`rebuild_async`): searches keep using the
old structure until the new one is swapped in, and changes made meanwhile are replayed onto
it. Saved files are replaced atomically.

The searcher re-scores: it asks for `candidates(k)` hits, reads their exact vectors and
keeps the k best by exact inner product (`rescore`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer import indexfile, kinds, ondisk, ondisk_build, probing
from indexer.faiss_ops import Ids as Ids  # re-exported
from indexer.faiss_ops import Scores as Scores  # re-exported
from indexer.faiss_ops import _faiss, _new_exact, _train_ivf, damage_reported, tune_nprobe
from indexer.faiss_ops import exact_search as exact_search  # re-exported
from indexer.faiss_ops import rescore as rescore  # re-exported
from indexer.indexfile import IndexState
from indexer.indexfile import atomic_write as atomic_write  # re-exported
from indexer.indexfile import atomic_write_with as atomic_write_with  # re-exported
from indexer.policy import DEFAULT_POLICY as DEFAULT_POLICY  # re-exported
from indexer.policy import Policy as Policy  # re-exported
from indexer.policy import choose_kind as choose_kind  # re-exported
from indexer.policy import rebuild_reason, resolve
from indexer.policy import with_policy as with_policy  # re-exported
from indexer.types import Embeddings

log = logging.getLogger(__name__)

#: Vectors for a build: an array aligned with the ids, or blocks of one (`ondisk.RowBlocks`).
Vectors = Embeddings | ondisk.RowBlocks


class VectorIndex:
    """Inner-product FAISS index over unit vectors, ids = image row ids.

    Mutations (add, remove, the swap after a rebuild, save) hold a lock; searches do not, as
    one VectorIndex is either written (by an indexing run) or searched (by a searcher).
    `place` is the index file it lives in (an on-disk kind's base folder goes beside it).
    """

    def __init__(
        self,
        dim: int,
        index: Any = None,
        *,
        built: int = 0,
        policy: Policy | None = None,
        place: Path | None = None,
    ) -> None:
        self.dim = dim
        self.index = index if index is not None else _new_exact(dim)
        if hasattr(self.index, "parallel_mode"):
            # Threads split one query's lists (FAISS's default splits the queries, leaving a
            # single query on one core): 1M vectors, 384 lists, 2 cores: 7.8 -> 4.4 ms.
            self.index.parallel_mode = 1
        self.built = built
        self.policy = resolve(policy)
        self.place = place
        self._margin = 0.0  # an in-memory IVF kind's probe margin (`indexer.probing`)
        self._lock = threading.RLock()
        self._journal: list[tuple[str, Ids, Embeddings | None]] | None = None
        self._thread: threading.Thread | None = None

    # -- what it is ---------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The index structure, in FAISS index_factory style: SQfp16, IVF2048,SQ8, ..."""
        return kinds.kind_of(self.index).label(self.index)

    @property
    def exact(self) -> bool:
        """Whether the index's scores are exact (float32 exhaustive search)."""
        return kinds.kind_of(self.index).exact

    @property
    def ondisk(self) -> bool:
        """Whether the index's lists are memory-mapped from a file."""
        return kinds.family(self.index) == "ondisk"

    @property
    def mapped_files(self) -> list[Path]:
        """Files the index reads memory-mapped as it searches (the on-disk kind's lists)."""
        return [self.index.lists_path] if self.ondisk else []

    @property
    def nprobe(self) -> int:
        """IVF lists searched per query (0 for exhaustive kinds)."""
        return int(self.index.nprobe) if hasattr(self.index, "nprobe") else 0

    @property
    def probe_margin(self) -> float:
        """The IVF kinds' probe margin for texts (`indexer.probing`; 0: none measured)."""
        return float(getattr(self.index, "probe_margin", self._margin))

    def candidates(self, k: int, queries: Embeddings | None = None, *, unlike: bool = False) -> int:
        """How many hits to fetch so that exact re-scoring of them finds the true top k
        (for these queries: more for texts whose lists are many, `probing.candidates`)."""
        base = kinds.kind_of(self.index).candidates(k)
        return probing.candidates(self.index, self.policy, unlike, queries, base, self._margin)

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
            kinds.add(self.index, ids, vecs)
            if self._journal is not None:
                self._journal.append(("add", ids.copy(), vecs.copy()))

    def remove(self, ids: Ids) -> None:
        """Remove the given ids (absent ones are ignored)."""
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, np.int64)
        with self._lock:
            kinds.remove(self.index, ids)
            if self._journal is not None:
                self._journal.append(("remove", ids.copy(), None))

    # -- search -------------------------------------------------------------------------------
    def search(self, queries: Embeddings, k: int, *, unlike: bool = False) -> tuple[Scores, Ids]:
        """The k best (scores, ids) per query row by the index's own scores; missing slots
        have id -1. For the exact top k, search `candidates(k)` and `rescore`.

        `unlike`: the queries are unlike the indexed vectors (texts against images), so an
        IVF index probes more lists (`indexer.probing`). A failure inside FAISS
        is an `IndexDamaged`.
        """
        with damage_reported():
            return self._search(queries, k, unlike)

    def _search(self, queries: Embeddings, k: int, unlike: bool) -> tuple[Scores, Ids]:
        index = self.index  # a concurrent swap replaces the reference, never mutates it
        n = int(index.ntotal)
        k = max(1, min(k, n)) if n else 1
        q = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        if not kinds.kind_of(index).ivf:
            return index.search(q, k)  # type: ignore[no-any-return]
        margin = self._margin  # a concurrent swap may pair it with the other index: harmless
        if len(q) > 1 and probing.per_query(index, unlike, margin):  # each text its own lists
            parts = [self._search(row[None], k, unlike) for row in q]
            return np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])
        return kinds.search_ivf(index, q, k, probing.probes(index, self.policy, unlike, q, margin))

    def search_subset(
        self, queries: Embeddings, k: int, ids: Ids, *, unlike: bool = False
    ) -> tuple[Scores, Ids]:
        """Like `search`, restricted to the given ids (a metadata filter's result).

        An IVF index probes proportionally more lists the smaller the allowed share is, so
        that about as many allowed candidates are seen as by an unfiltered search.
        """
        with damage_reported():
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
        if not kinds.kind_of(index).ivf:
            return index.search(q, k, params=faiss.SearchParameters(sel=sel))  # type: ignore[no-any-return]
        share = min(1.0, len(allowed) / n)
        probes = probing.probes(index, self.policy, unlike, q, self._margin)
        return kinds.search_ivf(index, q, k, math.ceil(probes / share), sel)

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        dim: int,
        ids: Ids,
        vectors: Vectors,
        policy: Policy | None = None,
        *,
        place: Path | None = None,
    ) -> VectorIndex:
        """A fresh index of the kind suited to this many vectors, holding them.

        The on-disk kind needs `place` (its base folder goes beside that file) and ids in
        ascending order; `vectors` may then be `RowBlocks` read a block at a time.
        """
        p = resolve(policy)
        ids = np.ascontiguousarray(ids, np.int64)
        n = len(ids)
        kind = choose_kind(n, dim, p)
        if kind.startswith("OnDisk") and place is not None:
            return cls._build_ondisk(kind, dim, ids, vectors, p, place)
        if kind.startswith("OnDisk"):
            log.warning("no file to keep an on-disk index beside; building it in memory")
            kind = ",".join(p for p in kind.split(",") if not p.startswith(("OnDisk", "OPQ")))
        rows = vectors if isinstance(vectors, np.ndarray) else vectors.block(0, n)
        vecs = np.ascontiguousarray(rows, np.float32).reshape(n, dim)
        started = time.perf_counter()
        if kind == "SQfp16":
            vi = cls(dim, built=n, policy=p, place=place)
            vi.add(ids, vecs)
            return vi
        index = _train_ivf(kind, dim, vecs)
        kinds.add(index, ids, vecs, replace_ids=False)
        vi = cls(dim, index, built=n, policy=p, place=place)
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
        vi._margin = probing.measure_margin(index, vecs)
        log.info(
            "built %s over %d vectors in %.1fs (+%.1fs tuning): nprobe %d, recall@10 %.3f",
            kind, n, trained, time.perf_counter() - started - trained, vi.nprobe, recall,
        )  # fmt: skip
        return vi

    @classmethod
    def _build_ondisk(
        cls, kind: str, dim: int, ids: Ids, vectors: Vectors, p: Policy, place: Path
    ) -> VectorIndex:
        rows = ondisk.ArrayRows(vectors) if isinstance(vectors, np.ndarray) else vectors
        index = ondisk_build.build_tuned(kind, dim, ids, rows, place, p)
        return cls(dim, index, built=len(ids), policy=p, place=place)

    # -- rebuilding ---------------------------------------------------------------------------
    def wants_rebuild(self, policy: Policy | None = None) -> str | None:
        """Why the index no longer suits its collection, or None if it does (or a rebuild
        is already running)."""
        if self.rebuilding:
            return None
        p = resolve(policy) if policy is not None else self.policy
        return rebuild_reason(kinds.family(self.index), len(self), self.built, p)

    @property
    def rebuilding(self) -> bool:
        """Whether a background rebuild is running."""
        return self._journal is not None

    def replace_with(self, other: VectorIndex) -> None:
        """Take over another index's structure (a rebuilt one), in place."""
        with self._lock:
            self.index = other.index
            self.built = other.built
            self._margin = other._margin

    def rebuild_async(
        self,
        load: Callable[[], tuple[Ids, Vectors]],
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
        policy = policy or self.policy

        def work() -> None:
            try:
                ids, vecs = load()
                fresh = VectorIndex.build(self.dim, ids, vecs, policy, place=self.place)
                with self._lock:
                    journal = self._journal or []
                    for op, op_ids, op_vecs in journal:
                        kinds.remove(fresh.index, op_ids)  # replays are idempotent
                        if op == "add" and op_vecs is not None:
                            kinds.add(fresh.index, op_ids, op_vecs, replace_ids=False)
                    self.replace_with(fresh)
                    self._journal = None
                log.info("index rebuilt as %s (%d changes replayed)", self.kind, len(journal))
                if done is not None:
                    done(self, not journal)
            except ondisk.DiskFull as exc:
                log.warning("%s", exc.strerror)
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
        """Save atomically, with the database generation it reflects in the same file (an
        on-disk index: its delta and tombstones; its base folder is already on disk)."""
        with self._lock:
            index = self.index
            state = IndexState(
                generation=generation,
                count=int(index.ntotal),
                dim=self.dim,
                kind=self.kind,
                built=self.built,
                nprobe=self.nprobe,
                probe_margin=round(self._margin, 6),
            )
            if not isinstance(index, ondisk.OnDiskIVF):
                indexfile.save(path, index, state)
                ondisk.prune(path, None)
                return
            tomb = index.tombstones
            state = replace(state, base=index.folder.name, tombstones=len(tomb))
            indexfile.save(path, index.delta, state, tomb.astype("<i8").tobytes())
            ondisk.prune(path, index.folder)

    @classmethod
    def open(
        cls, path: Path, dim: int, generation: int, count: int | None, policy: Policy | None = None
    ) -> tuple[VectorIndex | None, str]:
        """Load a saved index if it is intact and matches the database; else (None, why not)."""
        index, state, why, trailer = indexfile.load_with_trailer(path, generation)
        if index is None or state is None:
            return None, why
        if state.base:
            try:
                tomb = np.frombuffer(trailer, "<i8").astype(np.int64)
                index = ondisk.open_base(path.parent / state.base, index, tomb)
            except (OSError, ValueError, RuntimeError) as exc:
                reason = " ".join(str(exc).split())[:100] or type(exc).__name__
                return None, f"its on-disk lists are unusable ({reason})"
        want = index.ntotal if count is None else count  # None: not compared
        if index.ntotal != want or index.d != dim:
            return None, f"holds {index.ntotal} vectors of dimension {index.d}, expected {want}"
        if kinds.family(index) not in ("flat32", "flat16", "sq8", "pq", "ondisk"):
            return None, f"unexpected index structure {type(index).__name__}"
        vi = cls(dim, index, built=state.built or int(index.ntotal), policy=policy, place=path)
        if state.nprobe and hasattr(index, "nprobe"):
            index.nprobe = state.nprobe
        vi._margin = state.probe_margin if not state.base else 0.0  # on-disk: in its base
        return vi, "ok"
