"""Reranking a candidate pool: duplicate collapse, diversity, fusion, the automatic cut-off."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from indexer.types import Embeddings

Scores = npt.NDArray[np.float32]


def collapse_duplicates(order: list[int], vectors: Embeddings, threshold: float) -> list[int]:
    """Keep, in order, each candidate not closer than `threshold` to one already kept.

    `order` lists row positions in `vectors`, best first; one burst of near-identical shots
    then shows as its best frame. The kept prefix does not depend on how long the list is,
    so pages stay stable when the pool grows.
    """
    kept: list[int] = []
    for i in order:
        if kept and float(np.max(vectors[kept] @ vectors[i])) > threshold:
            continue
        kept.append(i)
    return kept


def mmr(order: list[int], vectors: Embeddings, relevance: Scores, lam: float, n: int) -> list[int]:
    """Maximal marginal relevance: lam * relevance - (1 - lam) * max similarity to chosen."""
    chosen: list[int] = []
    left = list(order)
    closest = np.full(len(vectors), -1.0, np.float32)
    while left and len(chosen) < n:
        cand = np.asarray(left)
        gain = lam * relevance[cand] - (1 - lam) * (closest[cand] if chosen else 0)
        best = int(cand[int(np.argmax(gain))])
        chosen.append(best)
        left.remove(best)
        closest = np.maximum(closest, vectors @ vectors[best])
    return chosen + left


def zscore(x: npt.ArrayLike) -> Scores:
    """Standardised values (all zeros when constant)."""
    a = np.asarray(x, np.float64)
    sd = a.std()
    return ((a - a.mean()) / sd if sd > 1e-9 else np.zeros_like(a)).astype(np.float32)


def fuse(clip: npt.ArrayLike, loglik: npt.ArrayLike, weight: float) -> Scores:
    """Generative rerank: (1 - w) * z(CLIP score) + w * z(length-normalised log-likelihood)."""
    return (1 - weight) * zscore(clip) + weight * zscore(loglik)


#: Fewer sampled images than this say too little about a query's score distribution.
MIN_BACKGROUND = 50


def background_level(background: Scores) -> tuple[float, float]:
    """(centre, spread) of the scores of images that have nothing to do with the query.

    The centre is the median of the query's scores over a sample of the collection, the
    spread the root-mean-square distance below it. Only the lower half is used because the
    upper half holds whatever the query does match: a query that resembles a large part of
    the collection ("a circle" where a fifth of the photos are circles) lifts the mean and
    widens the standard deviation of the whole sample, and mean + z*std then hides the very
    photos it matches. The lower half stays background as long as the query matches less
    than half of the collection.
    """
    scores = np.asarray(background, np.float64)
    centre = float(np.median(scores))
    below = scores[scores <= centre] - centre
    spread = float(np.sqrt(np.mean(below * below))) if len(below) else 0.0
    return centre, spread


def auto_cutoff(background: Scores, z: float) -> float:
    """The score a hit needs: z spreads above the query's background level (`background_level`).

    -1 (no cut-off) when the sample is too small to tell; never above 0.999, so that an image
    is always found by itself.
    """
    if len(background) < MIN_BACKGROUND:
        return -1.0
    centre, spread = background_level(background)
    return min(0.999, centre + z * spread)
