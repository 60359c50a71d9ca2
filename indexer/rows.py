"""Stored vectors read into arrays without a second copy of every vector."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from indexer import stored
from indexer.types import Embeddings
from indexer.vectors import Ids

log = logging.getLogger(__name__)


def collect_vectors(rows: Iterable[Any], dim: int, expected: int) -> tuple[Ids, Embeddings]:
    """(ids, vectors) from (id, stored blob) rows, into arrays sized for `expected` rows."""
    out_ids = np.empty(max(expected, 1), np.int64)
    out = np.empty((max(expected, 1), dim), np.float32)
    n = 0
    block_ids: list[int] = []
    block: list[bytes] = []

    def flush() -> None:
        nonlocal out_ids, out, n
        m = len(block)
        if n + m > len(out):  # rows were added since they were counted
            size = max(n + m, len(out) * 3 // 2)
            out_ids = np.resize(out_ids, size)
            grown = np.empty((size, dim), np.float32)
            grown[:n] = out[:n]
            out = grown
        out_ids[n : n + m] = block_ids
        out[n : n + m] = stored.decode(block, dim)
        n += m
        block_ids.clear()
        block.clear()

    for row in rows:
        block_ids.append(row[0])
        block.append(row[1])
        if len(block) >= 16384:
            flush()
    if block:
        flush()
    return out_ids[:n], out[:n]
