"""How many inverted lists a query probes, and an IVF index's probe margin.

An IVF index probes its tuned ``nprobe`` lists, tuned on image-like queries. Texts are
unlike the indexed photos (CLIP's modality gap): their neighbours lie in more lists. How
many more depends on the text. A text whose centroid scores fall away steeply from the best
(a clear topic) finds its neighbours in the best few lists; one whose scores are flat (a
random text tower's output, at the worst) has them spread over lists scoring almost alike.

So an index that knows its *probe margin* probes, for a text, every list whose centroid
scores within the margin of the query's best centroid: at least the tuned count, at most
the policy's cap; and re-scores as many times more candidates as it probes lists beyond the
tuned count (`candidates`), up to the policy's factor. The margin is measured when the index
is built (`calibrate_margin`): for random directions (the flattest queries there are), how
far below a query's best centroid score the lists of its true ten nearest neighbours lie. An
index without one probes ``unlike_probe_factor`` times the tuned lists for every text.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.types import Embeddings

if TYPE_CHECKING:
    from indexer.policy import Policy

log = logging.getLogger(__name__)

#: Random directions the margin is calibrated on.
CALIBRATION_QUERIES = 40
#: Share of those queries' true neighbours whose lists the margin must reach.
MARGIN_COVERAGE = 0.99


def probes(
    index: Any,
    policy: Policy,
    unlike: bool,
    queries: Embeddings | None = None,
    margin: float | None = None,
) -> int:
    """The lists to probe for these queries: the tuned count; for queries unlike the
    indexed vectors, those within the index's probe margin (the most any query of the batch
    needs), or without a margin the policy's factor times the tuned count; never more than
    the policy's cap, never fewer than the tuned count. `margin`: the index's, when the
    index itself does not carry one (the in-memory kinds)."""
    tuned = max(1, int(index.nprobe))
    if not unlike:
        return tuned
    cap = max(tuned, int(policy.max_probe_fraction * int(index.nlist)))
    margin = _margin(index, margin)
    if not per_query(index, unlike, margin) or queries is None or not len(queries):
        return min(cap, math.ceil(tuned * policy.unlike_probe_factor))
    scores = centroid_scores(index, queries)
    within = (scores >= scores.max(axis=1, keepdims=True) - np.float32(margin)).sum(axis=1)
    return int(min(cap, max(tuned, int(within.max()))))


def candidates(
    index: Any,
    policy: Policy,
    unlike: bool,
    queries: Embeddings | None,
    base: int,
    margin: float | None = None,
) -> int:
    """Hits to re-score for these queries, given the kind's count for image-like ones
    (`base`): texts probing more lists than the tuned count get as many times more, up to
    the policy's `max_candidate_factor` (a flat text's neighbours score close together)."""
    margin = _margin(index, margin)
    if not per_query(index, unlike, margin) or queries is None or not len(queries):
        return base
    tuned = max(1, int(index.nprobe))
    lists = probes(index, policy, unlike, queries, margin)
    return math.ceil(base * max(1.0, min(policy.max_candidate_factor, lists / tuned)))


def per_query(index: Any, unlike: bool, margin: float | None = None) -> bool:
    """Whether these queries' lists depend on each query (texts, on an index with a margin)."""
    return unlike and _margin(index, margin) > 0


def _margin(index: Any, margin: float | None) -> float:
    """The index's own margin (the on-disk kind's), else the one given, else none."""
    return float(getattr(index, "probe_margin", margin or 0.0))


def centroid_scores(index: Any, queries: Embeddings) -> Embeddings:
    """Inner products of queries with every list's centroid, in list order."""
    if hasattr(index, "centroid_scores"):  # the on-disk kind: its queries are rotated first
        return index.centroid_scores(queries)  # type: ignore[no-any-return]
    q = np.ascontiguousarray(queries, np.float32)
    scores, lists = index.quantizer.search(q, int(index.nlist))
    out = np.empty_like(scores)
    np.put_along_axis(out, lists, scores, axis=1)
    return out


def _lists_of(index: Any, vecs: Embeddings) -> np.ndarray:
    if hasattr(index, "centroid_scores"):
        return index.assign(vecs)  # type: ignore[no-any-return]
    return index.quantizer.assign(vecs, 1).reshape(-1)  # type: ignore[no-any-return]


def measure_margin(index: Any, vecs: Embeddings) -> float:
    """The probe margin of an in-memory IVF index holding (at least) `vecs`, with exact
    neighbours from them."""
    from indexer.faiss_ops import exact_search

    directions = random_directions(CALIBRATION_QUERIES, vecs.shape[1], np.random.default_rng(1))
    _, rows = exact_search(vecs, directions, 10)
    return calibrate_margin(index, directions, vecs[rows])


def random_directions(count: int, dim: int, rng: np.random.Generator) -> Embeddings:
    """Unit vectors drawn uniformly on the sphere."""
    x = rng.standard_normal((count, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def calibrate_margin(index: Any, queries: Embeddings, neighbours: Embeddings) -> float:
    """The probe margin: how far below each query's best centroid score the lists of its
    true nearest neighbours (`neighbours`, (queries, k, dim)) lie, at `MARGIN_COVERAGE`."""
    q = np.ascontiguousarray(queries, np.float32)
    nq, k, dim = neighbours.shape
    scores = centroid_scores(index, q)
    homes = _lists_of(index, np.ascontiguousarray(neighbours.reshape(nq * k, dim), np.float32))
    best = scores.max(axis=1)
    gaps = best[:, None] - np.take_along_axis(scores, homes.reshape(nq, k), axis=1)
    margin = float(np.quantile(gaps, MARGIN_COVERAGE))
    log.info(
        "probe margin %.4f (neighbours' lists of %d random directions: median gap %.4f, max %.4f)",
        margin, nq, float(np.median(gaps)), float(gaps.max()),
    )  # fmt: skip
    return margin
