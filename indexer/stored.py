"""How the database stores a vector: little-endian float16, half the bytes of float32.

A CLIP embedding loses nothing a ranking can see in float16 (cosine to the float32 vector
above 0.9999; clip-retrieval stores its embeddings the same way), and at ten million photos
the embeddings are most of the database. Rows written before (float32, twice as long) are
read as they are: a blob's length says which it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from indexer.types import Embeddings

log = logging.getLogger(__name__)

STORED = np.dtype("<f2")
OLD = np.dtype("<f4")


def encode(vec: np.ndarray) -> bytes:
    """The stored bytes of one vector."""
    return np.asarray(vec, STORED).tobytes()


def decode(blobs: Sequence[bytes], dim: int) -> Embeddings:
    """Stored vectors as (n, dim) unit-norm float32 rows, in the order given."""
    n = len(blobs)
    joined = b"".join(blobs)
    if len(joined) == n * dim * STORED.itemsize:
        return _unit(np.frombuffer(joined, STORED).reshape(n, dim))
    if len(joined) == n * dim * OLD.itemsize:
        return np.frombuffer(joined, OLD).reshape(n, dim).copy()
    # Both kinds in one batch (a database written before and after float16).
    out = np.empty((n, dim), np.float32)
    for i, blob in enumerate(blobs):
        out[i] = decode_one(blob, dim)
    return out


def decode_one(blob: bytes, dim: int) -> np.ndarray:
    """One stored vector as a unit-norm float32 row."""
    if len(blob) == dim * STORED.itemsize:
        return _unit(np.frombuffer(blob, STORED).reshape(1, dim))[0]
    return np.frombuffer(blob, OLD, count=dim).copy()


def _unit(half: np.ndarray) -> Embeddings:
    # Rounding to float16 moves a norm by up to ~1e-3; scores are inner products.
    vecs = half.astype(np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    np.divide(vecs, norms, out=vecs, where=norms > 0)
    return vecs
