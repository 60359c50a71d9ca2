"""Building the on-disk kind (see `indexer.ondisk`): train on a sample, fill shards in
parallel threads, merge them into one memory-mapped lists file, tune nprobe."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from indexer import probing
from indexer.faiss_ops import Ids, _faiss, exact_search
from indexer.indexfile import atomic_write
from indexer.ondisk import (
    BASE_FILE,
    BLOCK_ROWS,
    IDS_FILE,
    LISTS_FILE,
    META_FILE,
    ROTATION_FILE,
    TRAINED_FILE,
    DiskFull,
    OnDiskIVF,
    Rotation,
    RowBlocks,
    _quiet_stdout,
    open_base,
    rotate,
)
from indexer.policy import Policy
from indexer.types import Embeddings
from indexer.vecstore import StoreRows

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
#: Most sample queries `tune` uses.
TUNING_QUERIES = 60
#: Vectors per shard filled by one thread.
SHARD_ROWS = 1_000_000
#: Alternations of rotation and codebooks when training OPQ (FAISS's default is 50; recall
#: stops improving long before, and each takes seconds on two cores).
OPQ_ITERATIONS = 20


def _parse(kind: str) -> tuple[int, int, bool]:
    """(lists, PQ sub-quantisers, whether an OPQ rotation comes first) of
    ``OnDisk[,OPQm],IVFn,PQm``."""
    parts = kind.split(",")
    head, codec = parts[-2], parts[-1]
    return int(head.removeprefix("IVF")), int(codec.removeprefix("PQ")), parts[1].startswith("OPQ")


def train_rotation(sample: Embeddings, m: int) -> Rotation:
    """An OPQ rotation for `m` sub-quantisers, trained on (at most 65,536 of) `sample`:
    an orthogonal matrix, so inner products, and the vector file, stay as they are."""
    faiss = _faiss()
    opq = faiss.OPQMatrix(sample.shape[1], m)
    opq.niter = OPQ_ITERATIONS
    opq.max_train_points = PQ_TRAIN_POINTS
    opq.train(np.ascontiguousarray(sample, np.float32))
    d = sample.shape[1]
    return np.ascontiguousarray(faiss.vector_to_array(opq.A).reshape(d, d).T, np.float32)


def _sample(ids: Ids, rows: RowBlocks, size: int) -> Embeddings:
    n = len(ids)
    if size >= n:
        return rows.block(0, n)
    rng = np.random.default_rng(0)
    return rows.take(np.sort(rng.choice(n, size, replace=False)))


def train(kind: str, dim: int, ids: Ids, rows: RowBlocks) -> tuple[Any, Rotation | None]:
    """An empty IVF-PQ index of `kind`, its lists and codebooks trained on a sample, and the
    OPQ rotation its vectors go through first (None: the kind has none)."""
    faiss = _faiss()
    nlist, m, opq = _parse(kind)
    quantizer: Any
    if nlist >= HNSW_FROM_LISTS:
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efConstruction = 80
        # Assigning a vector to its list asks for one neighbour: a short search suffices
        # (at 4,096 lists, efSearch 128 visits about as many centroids as a flat scan). A
        # query's nprobe lists are searched with max(efSearch, nprobe).
        quantizer.hnsw.efSearch = 32
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
        rotation = train_rotation(sample, m) if opq else None
        index.train(sample if rotation is None else sample @ rotation)
    finally:
        faiss.omp_set_num_threads(omp)
    took = time.perf_counter() - started
    log.info("trained %s on %d vectors in %.1fs", kind, min(size, len(ids)), took)
    return index, rotation


def fill_shard(
    trained: Any,
    rotation: Rotation | None,
    ids: Ids,
    rows: RowBlocks,
    start: int,
    stop: int,
    out: str,
) -> None:
    """Add rows start..stop to a copy of the trained index and write it to `out`."""
    faiss = _faiss()
    shard = faiss.clone_index(trained)
    for lo in range(start, stop, BLOCK_ROWS):
        hi = min(stop, lo + BLOCK_ROWS)
        block = rows.block(lo, hi)
        shard.add_with_ids(rotate(block, rotation), np.ascontiguousarray(ids[lo:hi]))
    faiss.write_index(shard, out)


def _fill_in_threads(
    trained: Any,
    rotation: Rotation | None,
    ids: Ids,
    rows: RowBlocks,
    shards: list[tuple[int, int]],
    names: list[str],
    threads: int,
) -> None:
    faiss = _faiss()
    workers = threads or os.cpu_count() or 1
    omp = faiss.omp_get_max_threads()
    # Threads split the shards; FAISS's own threads would only fight them.
    faiss.omp_set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(shards)) or 1) as pool:
            futures = [
                pool.submit(fill_shard, trained, rotation, ids, rows, lo, hi, name)
                for (lo, hi), name in zip(shards, names, strict=True)
            ]
            for f in futures:
                f.result()
    finally:
        faiss.omp_set_num_threads(omp)


def build(
    kind: str,
    dim: int,
    ids: Ids,
    rows: RowBlocks,
    place: Path,
    threads: int = 0,
    *,
    ray_address: str | None = None,
    shard_rows: int = SHARD_ROWS,
) -> OnDiskIVF:
    """A new base of `kind` over (ids, rows) beside the index file `place`, opened mapped.

    The shards are filled by threads here, or by Ray tasks on the cluster at `ray_address`
    when the rows come from the home's vector file (which the cluster's nodes share).
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
        trained, rotation = train(kind, dim, ids, rows)
        faiss.write_index(trained, str(folder / TRAINED_FILE))
        if rotation is not None:
            np.save(folder / ROTATION_FILE, rotation)
        n = len(ids)
        shards = [(lo, min(n, lo + shard_rows)) for lo in range(0, n, shard_rows)]
        names = [str(folder / f"shard-{i}.index") for i in range(len(shards))]
        if ray_address and isinstance(rows, StoreRows):
            from indexer import ondisk_ray

            store = rows.store
            ondisk_ray.fill_shards(
                ray_address, trained, rotation, store.path, store.state.generation, ids,
                shards, names,
            )  # fmt: skip
        else:
            _fill_in_threads(trained, rotation, ids, rows, shards, names, threads)
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
    `want` hits, on sample queries (ground truth by blocks over every vector), and measure
    the index's probe margin for texts (`indexer.probing`) in the same pass."""
    from indexer.faiss_ops import smallest_nprobe, tuning_queries

    rng = np.random.default_rng(1)
    # Each query re-scores `want` rows read at random from the vector file: fewer queries
    # than the in-memory kinds use (recall within about +-0.02).
    queries = min(queries, TUNING_QUERIES)
    sample = tuning_queries(_sample(ids, rows, min(len(ids), 20_000)), queries, rng)
    directions = probing.random_directions(probing.CALIBRATION_QUERIES, index.d, rng)
    both = _exact_by_blocks(rows, np.concatenate([sample, directions]), k)
    truth, far = both[: len(sample)], both[len(sample) :]
    neighbours = rows.take(far.reshape(-1)).reshape(len(directions), k, index.d)
    index.probe_margin = probing.calibrate_margin(index, directions, neighbours)

    def top_of(found: Ids) -> np.ndarray:
        at = np.clip(np.searchsorted(ids, found), 0, len(ids) - 1)
        valid = (ids[at] == found) & (found >= 0)
        cand = rows.take(at.reshape(-1)).reshape(len(sample), -1, index.d)
        scores = np.einsum("qcd,qd->qc", cand, sample)
        scores[~valid] = -np.inf
        return np.take_along_axis(at, np.argsort(-scores, axis=1)[:, :k], axis=1)

    limit = max(1, int(index.nlist * max_fraction))
    _, recall = smallest_nprobe(
        index, sample, min(want, len(ids)), truth, top_of, limit=limit, target=target
    )
    return recall


def record_margin(index: OnDiskIVF) -> None:
    """Write the index's probe margin into its base's meta file (atomically)."""
    path = index.folder / META_FILE
    meta = json.loads(path.read_text())
    # Rounded as written, so that this index and one opened from the file probe alike.
    index.probe_margin = round(float(index.probe_margin), 6)
    meta["probe_margin"] = index.probe_margin
    atomic_write(path, json.dumps(meta).encode())


def _exact_by_blocks(rows: RowBlocks, q: Embeddings, k: int) -> np.ndarray:
    """Exact top-k row positions of each query over all rows, one block at a time."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    n = len(rows)
    step = BLOCK_ROWS
    for lo in range(0, n, step):
        s, i = exact_search(rows.block(lo, min(n, lo + step)), q, k)
        best_s = np.concatenate([best_s, s], axis=1)
        best_i = np.concatenate([best_i, i + lo], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(best_s, keep, axis=1)
        best_i = np.take_along_axis(best_i, keep, axis=1)
    return best_i


def build_tuned(
    kind: str, dim: int, ids: Ids, rows: RowBlocks, place: Path, policy: Policy
) -> OnDiskIVF:
    """`build`, then `tune` for the policy's target recall after re-scoring the kind's
    candidates."""
    from indexer.kinds import KINDS

    started = time.perf_counter()
    index = build(kind, dim, ids, rows, place, policy.build_threads, ray_address=policy.ray_address)
    built = time.perf_counter() - started
    recall = tune(
        index,
        ids,
        rows,
        want=KINDS["ondisk"].candidates(10),
        target=policy.target_recall,
        max_fraction=policy.max_probe_fraction,
        queries=policy.tuning_queries,
    )
    record_margin(index)
    log.info(
        "built %s over %d vectors in %.1fs (+%.1fs tuning): nprobe %d, recall@10 %.3f",
        kind, len(ids), built, time.perf_counter() - started - built, index.nprobe, recall,
    )  # fmt: skip
    return index
