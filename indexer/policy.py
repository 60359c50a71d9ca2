"""Which index kind suits a collection of n vectors, and what approximate kinds are tuned for.

Kinds by size (thresholds in `Policy`, from settings `PIXSEARCH_INDEX_*`):

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
    ``pq_limit`` < n <= ``ondisk_limit``: the same with product quantisation (dim/8 bytes
    per vector) and a larger over-fetch.
``OnDisk,OPQ{m},IVF{nlist},PQ{m}``
    n > ``ondisk_limit`` (6,000,000): product quantisation in inverted lists kept in a file
    and memory-mapped, filled shard by shard in parallel (`indexer.ondisk`): resident
    memory does not grow with the collection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from indexer.faiss_ops import _pq_subquantizers, ivf_lists

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger(__name__)


#: Product quantisation trains 256 centroids per sub-space: fewer vectors than this never use it.
MIN_PQ = 1024


@dataclass(frozen=True, slots=True)
class Policy:
    """When each index kind is used, and what the approximate ones are tuned for."""

    #: Up to this many vectors, exhaustive (exact) search; above it, an IVF index.
    exact_limit: int = 50_000
    #: Above this many vectors, product quantisation instead of 8-bit scalar quantisation.
    pq_limit: int = 4_000_000
    #: Above this many vectors, product quantisation in memory-mapped on-disk lists.
    ondisk_limit: int = 6_000_000
    #: An IVF index is rebuilt once the collection grew or shrank by this factor since it
    #: was trained (its list count no longer fits).
    growth: float = 4.0
    #: recall@10 after exact re-scoring, on sample queries, that `nprobe` is tuned for. The
    #: scan is cheap next to encoding the query text (1M vectors: ~2 ms at nprobe 67, 0.98;
    #: ~4 ms at 128, 0.994), so the target is high, leaving a margin for harder queries.
    target_recall: float = 0.99
    #: `nprobe` never goes above this fraction of the lists.
    max_probe_fraction: float = 0.25
    #: Queries unlike the indexed vectors probe this many times the tuned lists, on an index
    #: that has not measured its probe margin (one saved before margins were measured).
    #: Text queries are such queries for an index of image embeddings (CLIP's modality gap:
    #: a text's nearest images lie in more lists than an image's). An index with a margin
    #: probes, for each text, the lists its centroid scores call for (`indexer.probing`).
    unlike_probe_factor: float = 3.0
    #: A text probing more lists than the tuned count (its centroid scores are flat) has
    #: its candidates multiplied by as much, up to this factor: its neighbours score close
    #: together, so compressed codes misorder more of them. 10M photos, random-tower texts
    #: probing 1,024 of 4,096 lists (tuned 271): recall@10 0.918 from 1,000 candidates,
    #: 0.948 from 2,000, 0.960 from 3,000, 0.965 from 4,000.
    max_candidate_factor: float = 3.0
    #: Sample queries used to tune `nprobe`.
    tuning_queries: int = 200
    #: Threads filling the shards of an on-disk index (0: one per core).
    build_threads: int = 0
    #: A Ray cluster whose tasks fill those shards instead (`PIXSEARCH_RAY_ADDRESS`).
    ray_address: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The default policy with the settings' thresholds (`PIXSEARCH_INDEX_*`)."""
        return replace(
            DEFAULT_POLICY,
            exact_limit=settings.index_exact_limit,
            pq_limit=settings.index_pq_limit,
            ondisk_limit=settings.index_ondisk_limit,
            build_threads=settings.index_build_threads,
            ray_address=settings.ray_address,
        )


#: The policy used when none is given.
DEFAULT_POLICY = Policy()


def resolve(policy: Policy | None) -> Policy:
    """The given policy, or the default one."""
    return policy if policy is not None else DEFAULT_POLICY


def with_policy(**changes: Any) -> Policy:
    """The default policy with some fields changed."""
    return replace(DEFAULT_POLICY, **changes)


def choose_kind(n: int, dim: int, policy: Policy | None = None) -> str:
    """The index kind suited to a collection of n vectors."""
    p = resolve(policy)
    if n <= p.exact_limit:
        return "SQfp16"
    nlist = min(ivf_lists(n), max(1, n // 8))  # only tiny test policies hit the second term
    if n <= p.pq_limit or n < MIN_PQ:
        return f"IVF{nlist},SQ8"
    if n <= p.ondisk_limit:
        return f"IVF{nlist},PQ{_pq_subquantizers(dim)}"
    # Half the lists of the in-memory kinds: a list's codes are read from the file in one
    # sequential run, and training k-means on 10M-scale samples is the slow part of a build.
    nlist = max(16, min(nlist, ivf_lists(n) // 2, n // 32))
    m = _pq_subquantizers(dim)
    # An OPQ rotation first: texts' scores against photos lie close together (CLIP's modality
    # gap), and plain 64-byte codes could not rank them (recall@10 0.90 from 1,000
    # candidates at 1M; with the rotation 0.98).
    return f"OnDisk,OPQ{m},IVF{nlist},PQ{m}"


def rebuild_reason(family: str, n: int, built: int, policy: Policy | None = None) -> str | None:
    """Why an index of this family, built for `built` vectors and holding n, no longer suits
    its collection; None if it does."""
    p = resolve(policy)
    if family in ("flat32", "flat16"):
        if n > p.exact_limit:
            return f"{n} vectors are over the exact-search limit of {p.exact_limit}"
        return None
    if family not in ("sq8", "pq", "ondisk"):
        return f"unexpected index structure {family}"
    if n <= p.exact_limit // 2:
        return f"{n} vectors are few enough for exact search"
    if family == "sq8" and n > p.pq_limit:
        return f"{n} vectors are over the scalar-quantisation limit of {p.pq_limit}"
    if family == "pq" and n <= p.pq_limit // 2:
        return f"{n} vectors are few enough for scalar quantisation"
    if family == "pq" and n > p.ondisk_limit:
        return f"{n} vectors are over the in-memory limit of {p.ondisk_limit}"
    if family == "ondisk" and n <= p.ondisk_limit // 2:
        return f"{n} vectors are few enough for an in-memory index"
    built = built or n
    if n > built * p.growth or n * p.growth < built:
        return f"the collection went from {built} to {n} vectors since it was trained"
    return None
