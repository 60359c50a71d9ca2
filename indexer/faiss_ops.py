"""FAISS primitives under `VectorIndex`: index families, IVF training, exact search."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.errors import IndexDamaged
from indexer.types import Embeddings

log = logging.getLogger(__name__)

Ids = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float32]

#: Training points per IVF list (k-means sample size = nlist x this).
TRAIN_POINTS_PER_LIST = 32


def _faiss() -> Any:
    """The faiss module, imported on first use (its type stubs are incomplete)."""
    import faiss

    return faiss


def ivf_lists(n: int) -> int:
    """The number of IVF lists for n vectors: the power of two nearest 2 sqrt(n)."""
    return int(min(65536, max(16, 2 ** round(math.log2(max(2.0 * math.sqrt(max(n, 1)), 1.0))))))


def _pq_subquantizers(dim: int) -> int:
    """Bytes per PQ code: the largest divisor of dim that is at most dim/8."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


def _family(index: Any) -> str:
    """flat32, flat16, sq8, pq, or the FAISS class name for anything else."""
    faiss = _faiss()

    if isinstance(index, faiss.IndexIDMap):  # IndexIDMap2 derives from it
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexFlat):
            return "flat32"
        if isinstance(inner, faiss.IndexScalarQuantizer):
            return "flat16" if inner.sq.qtype == faiss.ScalarQuantizer.QT_fp16 else "flat8"
        return type(inner).__name__
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return "sq8"
    if isinstance(index, faiss.IndexIVFPQ):
        return "pq"
    return type(index).__name__


def _new_exact(dim: int) -> Any:
    faiss = _faiss()

    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIDMap2(sq)


def _train_ivf(kind: str, dim: int, vecs: Embeddings) -> Any:
    """An empty IVF index of `kind`, trained on a sample of `vecs`."""
    faiss = _faiss()

    head, codec = kind.split(",")
    nlist = int(head.removeprefix("IVF"))
    quantizer: Any = faiss.IndexFlatIP(dim)
    index: Any
    if codec == "SQ8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        m = int(codec.removeprefix("PQ"))
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()  # the IVF index owns (and frees) its quantizer
    cp = index.cp
    cp.niter = 12
    cp.spherical = True  # unit vectors under inner product
    cp.seed = 1234
    cp.min_points_per_centroid = 1
    cp.max_points_per_centroid = 1 << 30  # the sample is drawn here
    n = len(vecs)
    size = min(n, nlist * TRAIN_POINTS_PER_LIST)
    rng = np.random.default_rng(0)
    sample = vecs if size == n else vecs[np.sort(rng.choice(n, size, replace=False))]
    index.train(np.ascontiguousarray(sample, np.float32))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # removals in O(ids), not O(n)
    return index


def _is_ivf_hashed(index: Any) -> bool:
    faiss = _faiss()

    return hasattr(index, "direct_map") and index.direct_map.type == faiss.DirectMap.Hashtable


def _add(index: Any, ids: Ids, vecs: Embeddings, replace_ids: bool = True) -> None:
    if replace_ids and _is_ivf_hashed(index):
        _remove(index, ids)  # a hashed direct map must never see an id twice
    index.add_with_ids(vecs, ids)


def _remove(index: Any, ids: Ids) -> None:
    faiss = _faiss()

    if not len(ids):
        return
    arr = np.ascontiguousarray(ids, np.int64)
    if _is_ivf_hashed(index):
        index.remove_ids(faiss.IDSelectorArray(arr))
    else:
        index.remove_ids(faiss.IDSelectorBatch(arr))


def smallest_nprobe(
    index: Any,
    queries: Embeddings,
    want: int,
    truth: npt.NDArray[np.int64],
    top_of: Callable[[Ids], npt.NDArray[np.int64]],
    *,
    limit: int,
    target: float,
) -> tuple[int, float]:
    """Walk nprobe up a ladder to `limit`: the first value whose `want` hits per query,
    re-scored by `top_of` (hit ids -> the top k's row positions), reach `target` recall
    against `truth`, with that recall; (`limit`, its recall) when none does. Leaves the
    index's nprobe set to the value returned."""
    recall = 0.0
    for nprobe in _probe_ladder(limit):
        index.nprobe = nprobe
        _, found = index.search(queries, want)
        recall = _recall(top_of(found), truth)
        if recall >= target:
            return nprobe, recall
    return limit, recall


def _probe_ladder(limit: int) -> list[int]:
    out, value = [], 1.0
    while value < limit:
        out.append(int(value))
        value = max(value + 1, value * math.sqrt(2))
    out.append(limit)
    return sorted(set(out))


def _recall(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


# -- exact search and re-scoring --------------------------------------------------------------
def exact_search(
    vecs: Embeddings, queries: Embeddings, k: int, chunk: int = 65536
) -> tuple[Scores, npt.NDArray[np.int64]]:
    """Exact top-k (scores, row positions) of each query among `vecs`, by blocks (BLAS)."""
    q = np.ascontiguousarray(queries, np.float32).reshape(-1, vecs.shape[1])
    k = min(k, len(vecs))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(vecs), chunk):
        s = q @ vecs[start : start + chunk].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(best_s, keep, axis=1)
            best_i = np.take_along_axis(best_i, keep, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def rescore(query: Embeddings, ids: Ids, vectors: Embeddings, k: int) -> tuple[Scores, Ids]:
    """The exact top k among candidates, best first: (scores, ids) by inner product of the
    query with the candidates' float32 `vectors` (one row per id; ids of -1 are skipped)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    q = np.asarray(query, np.float32).reshape(-1)
    vecs = np.asarray(vectors, np.float32).reshape(len(ids), q.size)
    keep = ids >= 0
    ids, vecs = ids[keep], vecs[keep]
    scores = vecs @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return scores[order], ids[order]


def tuning_queries(vecs: Embeddings, count: int, rng: np.random.Generator) -> Embeddings:
    """Sample queries resembling real ones: stored vectors blurred by noise (cosine ~0.5 to
    their source), and midpoints of two stored vectors."""
    n, dim = vecs.shape
    count = max(1, min(count, n))
    half = count // 2
    a = vecs[rng.integers(0, n, count)].astype(np.float32)
    noise = rng.standard_normal((half, dim)).astype(np.float32)
    noise *= np.float32(math.sqrt(3.0)) / np.linalg.norm(noise, axis=1, keepdims=True)
    a[:half] += noise
    a[half:] += vecs[rng.integers(0, n, count - half)]
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return a


def tune_nprobe(
    index: Any,
    ids: Ids,
    vecs: Embeddings,
    *,
    want: int,
    target: float,
    max_fraction: float,
    queries: int,
    k: int = 10,
) -> float:
    """Set an IVF index's nprobe to the smallest value reaching `target` recall@k (after exact
    re-scoring of `want` hits) on sample queries; returns the recall reached."""
    rng = np.random.default_rng(1)
    sample = tuning_queries(vecs, queries, rng)
    truth = exact_search(vecs, sample, k)[1]  # row positions
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    limit = max(1, int(index.nlist * max_fraction))

    def top_of(found: Ids) -> npt.NDArray[np.int64]:
        at = np.clip(np.searchsorted(sorted_ids, found), 0, len(ids) - 1)
        valid = sorted_ids[at] == found
        pos = order[at]
        scores = np.einsum("qcd,qd->qc", vecs[pos], sample)
        scores[~valid] = -np.inf
        return np.take_along_axis(pos, np.argsort(-scores, axis=1)[:, :k], axis=1)

    _, recall = smallest_nprobe(
        index, sample, min(want, len(ids)), truth, top_of, limit=limit, target=target
    )
    if recall < target:
        log.warning(
            "IVF index reaches recall@%d %.3f at nprobe %d (target %.2f): the vectors "
            "are hardly clustered",
            k,
            recall,
            limit,
            target,
        )
    return recall


@contextmanager
def damage_reported() -> Iterator[None]:
    """FAISS failing inside a search (a damaged structure) as an `IndexDamaged`."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise IndexDamaged(f"the FAISS index failed while searching ({reason})") from exc
