"""The on-disk index kind for very large collections: IVF with product quantisation whose
inverted lists live in a file, memory-mapped (FAISS `OnDiskInvertedLists`).

Building (`build`): the coarse quantiser (k-means lists; an HNSW graph over the centroids
once there are many, so that assigning 10M vectors does not compare each with every
centroid) and the PQ codebooks are trained on a sample; the vectors are then added in
shards by a pool of threads (each shard a trained copy of the empty index, written to a
temporary file), and the shards' lists are merged into one ``lists.ivfdata`` file
(`merge_ondisk`, FAISS's demo_ondisk_ivf.py). The result is the *base*: a folder
``<index file>.ondisk-<token>/`` holding ``base.index`` (quantiser and codebooks), the
lists file and ``ids.npy`` (its ids, sorted), never changed once written.

Opening maps the lists file: a search reads only the lists it probes, so resident memory
stays that of the quantiser (nlist x dim floats) whatever the collection's size.

Changes never touch the base: new vectors go to a small in-memory *delta* (the same trained
IVF-PQ, its lists in RAM) and removed (or re-embedded) ids of the base become *tombstones*
excluded from its searches. The index file itself (`indexfile` layout, checksummed) holds
the delta, the tombstones and the base's folder name; it is what an indexing run saves at
each checkpoint. A rebuild (when the collection outgrew the base, see `policy`) writes a
new base; base folders no saved file names are removed after a save.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer.faiss_ops import Ids, Scores, _faiss, exact_search
from indexer.types import Embeddings

log = logging.getLogger(__name__)

#: Training points per list for the coarse k-means (the in-memory kinds use 32: at 10M
#: scale, k-means over nlist x 32 points is most of a build on two cores).
TRAIN_POINTS_PER_LIST = 16
#: Most points the PQ codebooks are trained on.
PQ_TRAIN_POINTS = 65_536
#: An HNSW graph over the centroids replaces the flat coarse quantiser from this many lists.
HNSW_FROM_LISTS = 2048
#: Training samples smaller than this are clustered on one thread.
SMALL_SAMPLE = 100_000
#: Vectors per shard filled by one thread.
SHARD_ROWS = 1_000_000
#: Vectors read (and converted to float32) at once.
BLOCK_ROWS = 65_536
BASE_FILE = "base.index"
LISTS_FILE = "lists.ivfdata"
IDS_FILE = "ids.npy"
META_FILE = "meta.json"
TRAINED_FILE = "trained.index"


class RowBlocks(Protocol):
    """Vectors aligned with a sorted id array, read a block at a time."""

    def __len__(self) -> int: ...
    def block(self, start: int, stop: int) -> Embeddings: ...
    def take(self, positions: np.ndarray) -> Embeddings: ...


class ArrayRows:
    """`RowBlocks` over an array in memory (or a memory map)."""

    def __init__(self, vecs: np.ndarray) -> None:
        self.vecs = vecs

    def __len__(self) -> int:
        return len(self.vecs)

    def block(self, start: int, stop: int) -> Embeddings:
        return np.ascontiguousarray(self.vecs[start:stop], np.float32)

    def take(self, positions: np.ndarray) -> Embeddings:
        return np.ascontiguousarray(self.vecs[positions], np.float32)


class DiskFull(OSError):
    """The disk filled while a base was written (the previous index stays in place)."""


class OnDiskIVF:
    """A memory-mapped base IVF-PQ index, plus an in-memory delta and tombstones.

    Looks like a FAISS IVF index to `VectorIndex` (ntotal, d, nlist, nprobe, pq, search with
    `SearchParametersIVF`); changes go through `add` and `remove`.
    """

    ondisk = True

    def __init__(
        self, base: Any, folder: Path, base_ids: Ids, delta: Any, tombstones: Ids | None = None
    ) -> None:
        self.base = base
        self.folder = folder
        self.base_ids = base_ids  # sorted, memory-mapped
        self.delta = delta
        self._tomb: set[int] = set(int(i) for i in (tombstones if tombstones is not None else ()))
        self._tomb_sel: Any = None
        self._lock = threading.Lock()

    # -- what it is -----------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.base.ntotal) - len(self._tomb) + int(self.delta.ntotal)

    @property
    def d(self) -> int:
        return int(self.base.d)

    @property
    def nlist(self) -> int:
        return int(self.base.nlist)

    @property
    def pq(self) -> Any:
        return self.base.pq

    @property
    def nprobe(self) -> int:
        return int(self.base.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.base.nprobe = value
        self.delta.nprobe = value

    @property
    def tombstones(self) -> Ids:
        """Base ids that no longer count, sorted."""
        return np.asarray(sorted(self._tomb), np.int64)

    def _in_base(self, ids: Ids) -> Ids:
        base = self.base_ids
        if not len(base):
            return ids[:0]
        at = np.clip(np.searchsorted(base, ids), 0, len(base) - 1)
        return ids[np.asarray(base[at]) == ids]

    # -- changes --------------------------------------------------------------------------
    def remove(self, ids: Ids) -> None:
        """Remove ids from the delta, and tombstone those of the base."""
        faiss = _faiss()
        ids = np.ascontiguousarray(ids, np.int64)
        if not len(ids):
            return
        with self._lock:
            self.delta.remove_ids(faiss.IDSelectorArray(ids))
            fresh = {int(i) for i in self._in_base(ids)} - self._tomb
            if fresh:
                self._tomb |= fresh
                self._tomb_sel = None

    def add(self, ids: Ids, vecs: Embeddings) -> None:
        """Add vectors (replacing any the index holds under the same ids) to the delta."""
        self.remove(ids)
        with self._lock:
            self.delta.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids)

    # -- search ---------------------------------------------------------------------------
    def search(self, q: Embeddings, k: int, params: Any = None) -> tuple[Scores, Ids]:
        """FAISS-style search over the base (less its tombstones) and the delta."""
        faiss = _faiss()
        nprobe = int(params.nprobe) if params is not None else self.nprobe
        sel = params.sel if params is not None else None
        tomb = self._tombstone_selector()
        base_sel = sel
        if tomb is not None:
            base_sel = tomb if sel is None else faiss.IDSelectorAnd(sel, tomb)
        parts = [self._one(self.base, q, k, nprobe, base_sel)]
        if self.delta.ntotal:
            parts.append(self._one(self.delta, q, k, nprobe, sel))
        if len(parts) == 1:
            return parts[0]
        from indexer.kinds import merge_top

        return merge_top(parts, k)

    @staticmethod
    def _one(index: Any, q: Embeddings, k: int, nprobe: int, sel: Any) -> tuple[Scores, Ids]:
        faiss = _faiss()
        extra = {"sel": sel} if sel is not None else {}
        params = faiss.SearchParametersIVF(nprobe=nprobe, **extra)
        scores, ids = index.search(q, k, params=params)
        return scores, ids

    def _tombstone_selector(self) -> Any:
        faiss = _faiss()
        with self._lock:
            if not self._tomb:
                return None
            if self._tomb_sel is None:
                batch = faiss.IDSelectorBatch(self.tombstones)
                sel = faiss.IDSelectorNot(batch)
                sel.referenced = batch  # keep the wrapped selector alive with it
                self._tomb_sel = sel
            return self._tomb_sel


# -- building ---------------------------------------------------------------------------------
def _parse(kind: str) -> tuple[int, int]:
    _, head, codec = kind.split(",")
    return int(head.removeprefix("IVF")), int(codec.removeprefix("PQ"))


def _sample(ids: Ids, rows: RowBlocks, size: int) -> Embeddings:
    n = len(ids)
    if size >= n:
        return rows.block(0, n)
    rng = np.random.default_rng(0)
    return rows.take(np.sort(rng.choice(n, size, replace=False)))


def train(kind: str, dim: int, ids: Ids, rows: RowBlocks) -> Any:
    """An empty IVF-PQ index of `kind`, its lists and codebooks trained on a sample."""
    faiss = _faiss()
    nlist, m = _parse(kind)
    quantizer: Any
    if nlist >= HNSW_FROM_LISTS:
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efConstruction = 80
        quantizer.hnsw.efSearch = 128
    else:
        quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    if nlist >= HNSW_FROM_LISTS:
        flat = faiss.IndexFlatIP(dim)
        index.clustering_index = flat  # k-means itself compares with every centroid
        flat.this.disown()
    cp = index.cp
    cp.niter = 10
    cp.spherical = True
    cp.seed = 1234
    cp.min_points_per_centroid = 1
    cp.max_points_per_centroid = 1 << 30
    index.pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS // 256
    size = max(nlist * TRAIN_POINTS_PER_LIST, PQ_TRAIN_POINTS)
    started = time.perf_counter()
    sample = _sample(ids, rows, size)
    omp = faiss.omp_get_max_threads()
    if len(sample) < SMALL_SAMPLE:
        faiss.omp_set_num_threads(1)  # OpenMP's spinning threads cost more than they give
    try:
        index.train(sample)
    finally:
        faiss.omp_set_num_threads(omp)
    took = time.perf_counter() - started
    log.info("trained %s on %d vectors in %.1fs", kind, min(size, len(ids)), took)
    return index


def _fill_shard(trained: Any, ids: Ids, rows: RowBlocks, start: int, stop: int, out: str) -> None:
    faiss = _faiss()
    shard = faiss.clone_index(trained)
    for lo in range(start, stop, BLOCK_ROWS):
        hi = min(stop, lo + BLOCK_ROWS)
        shard.add_with_ids(rows.block(lo, hi), np.ascontiguousarray(ids[lo:hi]))
    faiss.write_index(shard, out)


def build(
    kind: str,
    dim: int,
    ids: Ids,
    rows: RowBlocks,
    place: Path,
    threads: int = 0,
) -> OnDiskIVF:
    """A new base of `kind` over (ids, rows) beside the index file `place`, opened mapped.

    A full disk (or any failure) removes what was written and leaves earlier bases alone;
    the disk filling is a `DiskFull`.
    """
    faiss = _faiss()
    ids = np.ascontiguousarray(ids, np.int64)
    order = np.argsort(ids, kind="stable")
    if np.any(order != np.arange(len(ids))):
        raise ValueError("an on-disk index is built from ids in ascending order")
    # Written in its final place (FAISS records the lists file's path), named by no saved
    # index file until complete: a crash leaves an unreferenced folder that `prune` removes.
    folder = place.parent / f"{place.name}.ondisk-{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    try:
        folder.mkdir(parents=True)
        trained = train(kind, dim, ids, rows)
        faiss.write_index(trained, str(folder / TRAINED_FILE))
        n = len(ids)
        shards = [(lo, min(n, lo + SHARD_ROWS)) for lo in range(0, n, SHARD_ROWS)]
        names = [str(folder / f"shard-{i}.index") for i in range(len(shards))]
        workers = threads or os.cpu_count() or 1
        omp = faiss.omp_get_max_threads()
        # Threads split the shards; FAISS's own threads would only fight them.
        faiss.omp_set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=min(workers, len(shards)) or 1) as pool:
                futures = [
                    pool.submit(_fill_shard, trained, ids, rows, lo, hi, name)
                    for (lo, hi), name in zip(shards, names, strict=True)
                ]
                for f in futures:
                    f.result()
        finally:
            faiss.omp_set_num_threads(omp)
        filled = time.perf_counter() - started
        from faiss.contrib.ondisk import merge_ondisk

        empty = faiss.read_index(str(folder / TRAINED_FILE))
        with _quiet_stdout():  # OnDiskInvertedLists reports each resize with printf
            merge_ondisk(empty, names, str(folder / LISTS_FILE))
        faiss.write_index(empty, str(folder / BASE_FILE))
        del empty
        for name in names:
            os.unlink(name)
        np.save(folder / IDS_FILE, ids)
        size = (folder / LISTS_FILE).stat().st_size
        meta = {"count": n, "dim": dim, "kind": kind, "lists_bytes": size, "built_in": str(folder)}
        (folder / META_FILE).write_text(json.dumps(meta))
        _fsync_tree(folder)
        log.info(
            "built %s over %d vectors in %.1fs (%.1fs training and filling %d shards)",
            kind, n, time.perf_counter() - started, filled, len(shards),
        )  # fmt: skip
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if _is_enospc(exc):
            raise DiskFull(
                errno.ENOSPC,
                f"the disk holding {place.parent} filled while the on-disk index was built; "
                "the previous index is kept",
            ) from None
        raise
    return open_base(folder)


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence printf to file descriptor 1 (FAISS's on-disk lists chatter on it, and a CLI
    command's stdout is its JSON); what Python prints goes on through sys.stdout's buffer."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no stdout at all
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _is_enospc(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("no space left" in text or "errno 28" in text)


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_base(folder: Path, delta: Any = None, tombstones: Ids | None = None) -> OnDiskIVF:
    """Map a base folder; `delta` (a FAISS IVF-PQ) holds the changes since, else an empty
    one is made from the base's trained structure. Raises ValueError if the folder is
    incomplete or does not hold what its meta file says."""
    faiss = _faiss()
    meta = json.loads((folder / META_FILE).read_text())
    lists = folder / LISTS_FILE
    if lists.stat().st_size != int(meta["lists_bytes"]):
        size = lists.stat().st_size
        raise ValueError(f"{lists.name} is {size} bytes, expected {meta['lists_bytes']}")
    if meta.get("built_in") == str(folder):
        base = faiss.read_index(str(folder / BASE_FILE), faiss.IO_FLAG_READ_ONLY)
    else:  # the home moved: FAISS finds the lists beside the file, and says so with printf
        with _quiet_stdout():
            flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
            base = faiss.read_index(str(folder / BASE_FILE), flags)
    if base.ntotal != int(meta["count"]):
        raise ValueError(f"holds {base.ntotal} vectors, its meta file says {meta['count']}")
    base.parallel_mode = 1
    base_ids = np.load(folder / IDS_FILE, mmap_mode="r")
    if len(base_ids) != base.ntotal:
        raise ValueError(f"{IDS_FILE} holds {len(base_ids)} ids for {base.ntotal} vectors")
    if delta is None:
        delta = empty_delta(folder)
    delta.parallel_mode = 1
    return OnDiskIVF(base, folder, base_ids, delta, tombstones)


def empty_delta(folder: Path) -> Any:
    """An empty in-memory IVF-PQ with a base's trained quantiser and codebooks."""
    faiss = _faiss()
    delta = faiss.read_index(str(folder / TRAINED_FILE))
    delta.set_direct_map_type(faiss.DirectMap.Hashtable)  # removals in O(ids)
    return delta


def tune(
    index: OnDiskIVF,
    ids: Ids,
    rows: RowBlocks,
    *,
    want: int,
    target: float,
    max_fraction: float,
    queries: int,
    k: int = 10,
) -> float:
    """Set nprobe to the smallest value reaching `target` recall@k after exact re-scoring of
    `want` hits, on sample queries (ground truth by blocks over every vector)."""
    from indexer.faiss_ops import _probe_ladder, _recall, tuning_queries

    rng = np.random.default_rng(1)
    sample = tuning_queries(_sample(ids, rows, min(len(ids), 20_000)), queries, rng)
    truth = _exact_by_blocks(rows, sample, k)
    limit = max(1, int(index.nlist * max_fraction))
    best, recall = limit, 0.0
    for nprobe in _probe_ladder(limit):
        index.nprobe = nprobe
        _, found = index.search(sample, min(want, len(ids)))
        at = np.clip(np.searchsorted(ids, found), 0, len(ids) - 1)
        valid = (ids[at] == found) & (found >= 0)
        cand = rows.take(at.reshape(-1)).reshape(len(sample), -1, index.d)
        scores = np.einsum("qcd,qd->qc", cand, sample)
        scores[~valid] = -np.inf
        top = np.take_along_axis(at, np.argsort(-scores, axis=1)[:, :k], axis=1)
        recall = _recall(top, truth)
        if recall >= target:
            best = nprobe
            break
    index.nprobe = best
    return recall


def _exact_by_blocks(rows: RowBlocks, q: Embeddings, k: int) -> np.ndarray:
    """Exact top-k row positions of each query over all rows, one block at a time."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    n = len(rows)
    step = BLOCK_ROWS * 4
    for lo in range(0, n, step):
        s, i = exact_search(rows.block(lo, min(n, lo + step)), q, k)
        best_s = np.concatenate([best_s, s], axis=1)
        best_i = np.concatenate([best_i, i + lo], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(best_s, keep, axis=1)
        best_i = np.take_along_axis(best_i, keep, axis=1)
    return best_i


def prune(place: Path, keep: Path | None) -> None:
    """Remove base folders of the index file `place` that no saved file names: complete
    ones a minute after they were written (a rebuild in another process may be about to
    name its new one), incomplete ones after six hours (one may still be being written).
    A searcher that still maps a removed base keeps reading it: its files live on until
    unmapped."""
    now = time.time()
    for folder in place.parent.glob(f"{place.name}.ondisk-*"):
        if folder == keep or not folder.is_dir():
            continue
        try:
            meta = folder / META_FILE
            age = now - (meta if meta.exists() else folder).stat().st_mtime
        except OSError:
            continue
        if age > (60 if meta.exists() else 6 * 3600):
            shutil.rmtree(folder, ignore_errors=True)
