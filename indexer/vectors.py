"""The FAISS index: derived from the stored embeddings, saved atomically, checked on open."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.types import Embeddings

log = logging.getLogger(__name__)

Ids = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class IndexState:
    """What the sidecar file records about a saved index."""

    generation: int
    count: int
    dim: int
    kind: str


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class VectorIndex:
    """Inner-product FAISS index over unit vectors, ids = image row ids."""

    def __init__(self, dim: int, index: Any = None) -> None:
        import faiss

        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def kind(self) -> str:
        """A short description of the index structure."""
        import faiss

        inner = faiss.downcast_index(self.index.index) if hasattr(self.index, "index") else None
        return type(inner or self.index).__name__

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: Ids, vectors: Embeddings) -> None:
        """Add vectors under the given ids."""
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))

    def remove(self, ids: Ids) -> None:
        """Remove the given ids (absent ones are ignored)."""
        import faiss

        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, np.int64)))

    def search(self, queries: Embeddings, k: int) -> tuple[npt.NDArray[np.float32], Ids]:
        """The k best (scores, ids) per query row; missing slots have id -1."""
        k = max(1, min(k, len(self))) if len(self) else 1
        scores, ids = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, ids

    def search_subset(
        self, queries: Embeddings, k: int, ids: Ids
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Like `search`, restricted to the given ids (a FAISS id selector; used by filters)."""
        import faiss

        if not len(self) or not len(ids):
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = max(1, min(k, len(ids)))
        selector = faiss.IDSelectorBatch(np.asarray(ids, np.int64))
        params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        scores, found = self.index.search(
            np.ascontiguousarray(queries, np.float32), k, params=params
        )
        return scores, found

    @classmethod
    def build(cls, dim: int, ids: Ids, vectors: Embeddings) -> VectorIndex:
        """A fresh index holding these vectors."""
        vi = cls(dim)
        vi.add(ids, vectors)
        return vi

    def save(self, path: Path, generation: int) -> None:
        """Save atomically, with the database generation it reflects in the same file."""
        import faiss

        state = {"generation": generation, "count": len(self), "dim": self.dim, "kind": self.kind}
        header = json.dumps(state).encode()
        body = faiss.serialize_index(self.index)
        atomic_write(path, _MAGIC + len(header).to_bytes(4, "little") + header + body.tobytes())

    @classmethod
    def open(
        cls, path: Path, dim: int, generation: int, count: int
    ) -> tuple[VectorIndex | None, str]:
        """Load a saved index if it matches the database; else (None, why not)."""
        import faiss

        try:
            raw = np.fromfile(path, dtype=np.uint8)
        except FileNotFoundError:
            return None, "missing"
        except OSError as exc:
            return None, f"unreadable ({exc.strerror or exc})"
        try:
            if raw[: len(_MAGIC)].tobytes() != _MAGIC:
                raise ValueError("not a pixsearch index file")
            start = len(_MAGIC) + 4
            size = int.from_bytes(raw[len(_MAGIC) : start].tobytes(), "little")
            state = IndexState(**json.loads(raw[start : start + size].tobytes()))
            if state.generation != generation:
                return None, (
                    f"stale (built at generation {state.generation}, database at {generation})"
                )
            index = faiss.deserialize_index(raw[start + size :])
        except (RuntimeError, ValueError, TypeError) as exc:
            return None, f"unreadable ({' '.join(str(exc).split())[:80]})"
        if index.ntotal != count or index.d != dim:
            return None, f"holds {index.ntotal} vectors of dimension {index.d}, expected {count}"
        return cls(dim, index), "ok"


_MAGIC = b"PIXSIDX1"
