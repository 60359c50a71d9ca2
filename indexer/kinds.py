"""The index kinds a `VectorIndex` can hold: what each is called, how many candidates its
approximate scores need, how ids go in and out, how it is searched (a registry by family).

Families: ``flat32`` (exact float32, older files), ``flat16`` (``SQfp16``), ``sq8``
(``IVF..,SQ8``), ``pq`` (``IVF..,PQ..``), ``ondisk`` (``OnDisk,OPQ..,IVF..,PQ..``, see
`indexer.ondisk`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.faiss_ops import Ids, Scores, _add, _faiss, _family, _remove
from indexer.types import Embeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Kind:
    """How one family of index is named, over-fetched, changed and searched."""

    family: str
    #: The kind's name in FAISS index_factory style, from the index.
    label: Callable[[Any], str]
    #: How many hits to fetch so that exact re-scoring of them finds the true top k.
    candidates: Callable[[int], int]
    #: Whether the scores are exact.
    exact: bool = False
    #: Whether searches take an `nprobe` (inverted lists).
    ivf: bool = False


def _ivf_candidates(k: int) -> int:
    return max(3 * k, k + 30)


def _pq_candidates(k: int) -> int:
    return max(10 * k, k + 100)


def _ondisk_candidates(k: int) -> int:
    # 64-byte codes of 512-d vectors rank texts poorly (CLIP's modality gap: a text's scores
    # against photos are close together): a random text tower's queries over 200k synthetic
    # photos reached recall@10 0.66 from 100 candidates, 0.85 from 300, 0.96 from 1000.
    # Re-scoring reads the candidates' rows from the vector file (1 KB each).
    return max(100 * k, k + 500)


KINDS: dict[str, Kind] = {
    "flat32": Kind("flat32", lambda i: "Flat", lambda k: k, exact=True),
    "flat16": Kind("flat16", lambda i: "SQfp16", lambda k: k + max(8, k // 4)),
    "flat8": Kind("flat8", lambda i: "SQ8", _ivf_candidates),
    "sq8": Kind("sq8", lambda i: f"IVF{i.nlist},SQ8", _ivf_candidates, ivf=True),
    "pq": Kind("pq", lambda i: f"IVF{i.nlist},PQ{i.pq.M}", _pq_candidates, ivf=True),
    "ondisk": Kind(
        "ondisk", lambda i: f"OnDisk,{_opq(i)}IVF{i.nlist},PQ{i.pq.M}", _ondisk_candidates, ivf=True
    ),
}


def _opq(index: Any) -> str:
    return "" if getattr(index, "rotation", None) is None else f"OPQ{index.pq.M},"


def family(index: Any) -> str:
    """The family of a FAISS index or an on-disk index."""
    if getattr(index, "ondisk", False):
        return "ondisk"
    return _family(index)


def kind_of(index: Any) -> Kind:
    """The registry entry of an index (a neutral one for unknown structures)."""
    fam = family(index)
    return KINDS.get(fam) or Kind(fam, lambda i: fam, _ivf_candidates)


def add(index: Any, ids: Ids, vecs: Embeddings, replace_ids: bool = True) -> None:
    """Add vectors under ids (replacing ids the index holds, unless told there are none)."""
    if getattr(index, "ondisk", False):
        index.add(ids, vecs)
    else:
        _add(index, ids, vecs, replace_ids)


def remove(index: Any, ids: Ids) -> None:
    """Remove ids (absent ones are ignored)."""
    if getattr(index, "ondisk", False):
        index.remove(ids)
    else:
        _remove(index, ids)


def search_ivf(
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


def merge_top(parts: list[tuple[Scores, Ids]], k: int) -> tuple[Scores, Ids]:
    """The k best of several (scores, ids) result sets per query row (ids -1 are empty)."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(scores, order, axis=1)
    top_i = np.take_along_axis(ids, order, axis=1)
    top_i[~np.isfinite(top_s)] = -1
    return top_s, top_i
