"""A home's derived vector files at scale: the float16 vector file (`vecstore`) kept beside
the index, read from the database a block at a time, and the source an on-disk index is
built from (the vector file's rows, never the whole collection in memory)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select

from indexer import stored
from indexer.db import Embedding, Image
from indexer.faiss_ops import Ids
from indexer.policy import Policy, choose_kind
from indexer.types import Embeddings
from indexer.vecstore import StoreRows, VectorStore, open_store, write_store

if TYPE_CHECKING:
    from indexer.home import Home
    from indexer.ondisk import RowBlocks

log = logging.getLogger(__name__)

#: Rows read from the database at a time when the vector file is rebuilt.
READ_BLOCK = 16_384


def iter_vectors(home: Home, model_id: int, dim: int) -> Iterator[tuple[Ids, Embeddings]]:
    """Every (ids, vectors) of the model, by ascending id, a block at a time."""
    last = 0
    stmt = (
        select(Image.id, Embedding.vector)
        .join(Embedding, Embedding.content_hash == Image.content_hash)
        .where((Embedding.model_id + 0) == model_id)  # see `Home.stored_vectors`
        .order_by(Image.id)
    )
    while True:
        with home.engine.connect() as conn:
            rows = conn.execute(stmt.where(Image.id > last).limit(READ_BLOCK)).all()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        vecs = stored.decode([r[1] for r in rows], dim)
        last = int(ids[-1])
        yield ids, vecs


def ordered_ids(home: Home, model_id: int) -> Ids:
    """Ids of the images with a vector for the model, ascending."""
    stmt = (
        select(Image.id)
        .join(Embedding, Embedding.content_hash == Image.content_hash)
        .where((Embedding.model_id + 0) == model_id)
    )
    # Sorted here, not by ORDER BY: that made SQLite walk the whole images table in id
    # order; without it the query reads two covering indexes only (at 10M photos about
    # 1 GB instead of every row's page).
    parts: list[np.ndarray] = []
    with home.engine.connect() as conn:
        cursor = conn.execute(stmt).cursor
        # A million rows at a time: 10M ids as Python tuples would take a gigabyte.
        while rows := cursor.fetchmany(1_000_000):
            parts.append(np.array(rows, dtype=np.int64).reshape(-1))
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def load_store(home: Home, key: str, model_id: int, dim: int) -> VectorStore:
    """The model's vector file, rebuilt from the database (with a warning) when it is
    missing, truncated, damaged or stale."""
    path = home.vectors_path(key)
    generation = home.generation(model_id)
    store, why = open_store(path, dim, generation)
    if store is not None:
        return store
    started = time.perf_counter()
    with home.engine.connect() as conn:
        top = int(conn.scalar(select(func.max(Image.id))) or 0) + 1
    store = write_store(path, dim, generation, iter_vectors(home, model_id, dim), top)
    if why != "missing" or home.count_vectors(model_id):
        log.warning(
            "vector file %s is %s; rebuilt it from the database in %.1fs",
            path.name,
            why,
            time.perf_counter() - started,
        )
    return store


def build_source(
    home: Home, key: str, model_id: int, dim: int, policy: Policy
) -> tuple[Ids, Embeddings | RowBlocks]:
    """What an index of the model is built from: the vector file's rows for the on-disk
    kind (read a block at a time), else the stored embeddings in memory."""
    count = home.count_vectors(model_id)
    if choose_kind(count, dim, policy).startswith("OnDisk"):
        store = load_store(home, key, model_id, dim)
        ids = ordered_ids(home, model_id)
        return ids, StoreRows(store, ids)
    return home.stored_vectors(model_id, dim)
