"""Filling an on-disk index's shards as Ray tasks, when a Ray cluster is configured
(`PIXSEARCH_RAY_ADDRESS`): each task reads its rows from the home's vector file and writes
its shard into the new base's folder, both in the home, which the cluster's nodes share (as
they share it for indexing, see the README's "More than one machine"); the caller merges the
shards as it merges those of its own threads. Ray is imported only here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from indexer.faiss_ops import Ids, _faiss

log = logging.getLogger(__name__)


def fill_shards(
    address: str,
    trained: Any,
    rotation: np.ndarray | None,
    store_path: Path,
    generation: int,
    ids: Ids,
    shards: list[tuple[int, int]],
    names: list[str],
) -> None:
    """Fill each shard (`ids[lo:hi]`, written to its name) in a Ray task of one CPU."""
    from indexer.cluster import Cluster, ClusterUnavailable

    Cluster(address).connect()
    import ray

    faiss = _faiss()
    blob = ray.put(faiss.serialize_index(trained))
    task = ray.remote(num_cpus=1, max_retries=2)(_fill)
    refs = [
        task.remote(blob, rotation, str(store_path), generation, ids[lo:hi], name)
        for (lo, hi), name in zip(shards, names, strict=True)
    ]
    log.info("filling %d shards on the Ray cluster at %s", len(refs), address)
    try:
        ray.get(refs)
    except Exception as exc:  # Ray's many kinds: a lost node, a task's own error
        log.debug("a shard task failed", exc_info=True)
        first = str(exc).strip().splitlines()
        raise ClusterUnavailable(
            f"building the index on the Ray cluster failed: {first[-1] if first else exc!r}"
        ) from None


def _fill(
    blob: np.ndarray,
    rotation: np.ndarray | None,
    store_path: str,
    generation: int,
    ids: Ids,
    out: str,
) -> None:
    """One shard, on a worker: the trained index, filled with its rows, written to `out`."""
    from indexer.ondisk_build import fill_shard
    from indexer.vecstore import StoreRows, open_store

    faiss = _faiss()
    trained = faiss.deserialize_index(blob)
    path = Path(store_path)
    store, why = open_store(path, int(trained.d), generation)
    if store is None:
        raise OSError(f"the vector file {path} is {why} on this node")
    fill_shard(trained, rotation, ids, StoreRows(store, ids), 0, len(ids), out)
