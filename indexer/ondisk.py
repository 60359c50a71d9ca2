"""The on-disk index kind for very large collections: IVF with product quantisation whose
inverted lists live in a file, memory-mapped (FAISS `OnDiskInvertedLists`).

Building (`build`): the coarse quantiser (k-means lists; an HNSW graph over the centroids
once there are many, so that assigning 10M vectors does not compare each with every
centroid) and the PQ codebooks are trained on a sample; the vectors are then added in
shards by a pool of threads (each shard a trained copy of the empty index, written to a
temporary file), and the shards' lists are merged into one ``lists.ivfdata`` file
(`merge_ondisk`, FAISS's demo_ondisk_ivf.py). The result is the *base*: a folder
``<index file>.ondisk-<token>/`` holding ``base.index`` (quantiser and codebooks), the
lists file and ``ids.npy`` (its ids, sorted), never changed once written.

Opening maps the lists file: a search reads only the lists it probes, so resident memory
stays that of the quantiser (nlist x dim floats) whatever the collection's size.

Changes never touch the base: new vectors go to a small in-memory *delta* (the same trained
IVF-PQ, its lists in RAM) and removed (or re-embedded) ids of the base become *tombstones*
excluded from its searches. The index file itself (`indexfile` layout, checksummed) holds
the delta, the tombstones and the base's folder name; it is what an indexing run saves at
each checkpoint. A rebuild (when the collection outgrew the base, see `policy`) writes a
new base; base folders no saved file names are removed after a save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from indexer.faiss_ops import Ids, Scores, _faiss
from indexer.types import Embeddings

log = logging.getLogger(__name__)

#: Vectors read (and converted to float32) at once.
BLOCK_ROWS = 65_536
BASE_FILE = "base.index"
LISTS_FILE = "lists.ivfdata"
IDS_FILE = "ids.npy"
META_FILE = "meta.json"
TRAINED_FILE = "trained.index"
ROTATION_FILE = "rotation.npy"

#: An OPQ rotation (d, d), orthogonal: its vectors go in as ``x @ rotation``.
Rotation = npt.NDArray[np.float32]


def rotate(vecs: Embeddings, rotation: Rotation | None) -> Embeddings:
    """Vectors as an index with this rotation holds them (unchanged without one)."""
    vecs = np.ascontiguousarray(vecs, np.float32)
    return vecs if rotation is None else np.ascontiguousarray(vecs @ rotation)


class RowBlocks(Protocol):
    """Vectors aligned with a sorted id array, read a block at a time."""

    def __len__(self) -> int: ...
    def block(self, start: int, stop: int) -> Embeddings: ...
    def take(self, positions: np.ndarray) -> Embeddings: ...


class ArrayRows:
    """`RowBlocks` over an array in memory (or a memory map)."""

    def __init__(self, vecs: np.ndarray) -> None:
        self.vecs = vecs

    def __len__(self) -> int:
        return len(self.vecs)

    def block(self, start: int, stop: int) -> Embeddings:
        return np.ascontiguousarray(self.vecs[start:stop], np.float32)

    def take(self, positions: np.ndarray) -> Embeddings:
        return np.ascontiguousarray(self.vecs[positions], np.float32)


class DiskFull(OSError):
    """The disk filled while a base was written (the previous index stays in place)."""


class OnDiskIVF:
    """A memory-mapped base IVF-PQ index, plus an in-memory delta and tombstones.

    Looks like a FAISS IVF index to `VectorIndex` (ntotal, d, nlist, nprobe, pq, search with
    `SearchParametersIVF`); changes go through `add` and `remove`.
    """

    ondisk = True

    def __init__(
        self,
        base: Any,
        folder: Path,
        base_ids: Ids,
        delta: Any,
        tombstones: Ids | None = None,
        rotation: Rotation | None = None,
        probe_margin: float = 0.0,
    ) -> None:
        self.base = base
        #: How far below its best centroid score a text's lists are probed (`indexer.probing`;
        #: 0: not measured, texts probe a fixed multiple of the tuned lists).
        self.probe_margin = probe_margin
        #: The OPQ rotation the base and the delta hold their vectors in (None: none).
        self.rotation = rotation
        self.folder = folder
        self.base_ids = base_ids  # sorted, memory-mapped
        self.delta = delta
        self._tomb: set[int] = set(int(i) for i in (tombstones if tombstones is not None else ()))
        self._tomb_sel: Any = None
        self._flat: Any = None
        self._centroid_vecs = np.zeros((0, self.d), np.float32)
        self._lock = threading.Lock()

    # -- what it is -----------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.base.ntotal) - len(self._tomb) + int(self.delta.ntotal)

    @property
    def d(self) -> int:
        return int(self.base.d)

    @property
    def nlist(self) -> int:
        return int(self.base.nlist)

    @property
    def pq(self) -> Any:
        return self.base.pq

    @property
    def nprobe(self) -> int:
        return int(self.base.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.base.nprobe = value
        self.delta.nprobe = value

    @property
    def lists_path(self) -> Path:
        """The memory-mapped inverted lists of the base."""
        return self.folder / LISTS_FILE

    @property
    def tombstones(self) -> Ids:
        """Base ids that no longer count, sorted."""
        return np.asarray(sorted(self._tomb), np.int64)

    def _in_base(self, ids: Ids) -> Ids:
        base = self.base_ids
        if not len(base):
            return ids[:0]
        at = np.clip(np.searchsorted(base, ids), 0, len(base) - 1)
        return ids[np.asarray(base[at]) == ids]

    # -- changes --------------------------------------------------------------------------
    def remove(self, ids: Ids) -> None:
        """Remove ids from the delta, and tombstone those of the base."""
        faiss = _faiss()
        ids = np.ascontiguousarray(ids, np.int64)
        if not len(ids):
            return
        with self._lock:
            self.delta.remove_ids(faiss.IDSelectorArray(ids))
            fresh = {int(i) for i in self._in_base(ids)} - self._tomb
            if fresh:
                self._tomb |= fresh
                self._tomb_sel = None

    def add(self, ids: Ids, vecs: Embeddings) -> None:
        """Add vectors (replacing any the index holds under the same ids) to the delta."""
        self.remove(ids)
        with self._lock:
            self.delta.add_with_ids(rotate(vecs, self.rotation), ids)

    # -- search ---------------------------------------------------------------------------
    def search(self, q: Embeddings, k: int, params: Any = None) -> tuple[Scores, Ids]:
        """FAISS-style search over the base (less its tombstones) and the delta."""
        faiss = _faiss()
        q = rotate(q, self.rotation)  # inner products are unchanged by it
        nprobe = int(params.nprobe) if params is not None else self.nprobe
        sel = params.sel if params is not None else None
        tomb = self._tombstone_selector()
        base_sel = sel
        if tomb is not None:
            base_sel = tomb if sel is None else faiss.IDSelectorAnd(sel, tomb)
        parts = [self._one(self.base, q, k, nprobe, base_sel)]
        if self.delta.ntotal:
            parts.append(self._one(self.delta, q, k, nprobe, sel))
        if len(parts) == 1:
            return parts[0]
        from indexer.kinds import merge_top

        return merge_top(parts, k)

    def _one(self, index: Any, q: Embeddings, k: int, nprobe: int, sel: Any) -> tuple[Scores, Ids]:
        faiss = _faiss()
        extra = {"sel": sel} if sel is not None else {}
        params = faiss.SearchParametersIVF(nprobe=nprobe, **extra)
        # The lists to probe, chosen exactly among the centroids: the HNSW graph that assigns
        # vectors quickly at build time misses lists for queries far from every centroid
        # (texts: recall@10 0.51 at 10M photos); a flat pass over 4,096 centroids is ~2
        # MFLOP a query.
        nprobe = min(nprobe, self.nlist)
        params.nprobe = nprobe
        q = np.ascontiguousarray(q, np.float32)
        dists, lists = self._centroids().search(q, nprobe)
        scores = np.empty((len(q), k), np.float32)
        ids = np.empty((len(q), k), np.int64)
        # The C++ call: FAISS's Python wrapper of it takes no search parameters (selectors).
        index.search_preassigned_c(
            len(q), faiss.swig_ptr(q), k, faiss.swig_ptr(lists), faiss.swig_ptr(dists),
            faiss.swig_ptr(scores), faiss.swig_ptr(ids), False, params,
        )  # fmt: skip
        return scores, ids

    def _centroids(self) -> Any:
        if self._flat is None:
            faiss = _faiss()
            quantizer = faiss.downcast_index(self.base.quantizer)
            self._centroid_vecs = quantizer.reconstruct_n(0, quantizer.ntotal)
            flat = faiss.IndexFlatIP(self.d)
            flat.add(self._centroid_vecs)
            self._flat = flat
        return self._flat

    def centroid_scores(self, q: Embeddings) -> Scores:
        """Inner products of (unrotated) queries with every list's centroid, in list order."""
        self._centroids()
        return np.asarray(rotate(q, self.rotation) @ self._centroid_vecs.T, np.float32)

    def assign(self, vecs: Embeddings) -> Ids:
        """The list each (unrotated) vector was, or would be, added to."""
        return self.base.quantizer.assign(rotate(vecs, self.rotation), 1).reshape(-1)  # type: ignore[no-any-return]

    def _tombstone_selector(self) -> Any:
        faiss = _faiss()
        with self._lock:
            if not self._tomb:
                return None
            if self._tomb_sel is None:
                batch = faiss.IDSelectorBatch(self.tombstones)
                sel = faiss.IDSelectorNot(batch)
                sel.referenced = batch  # keep the wrapped selector alive with it
                self._tomb_sel = sel
            return self._tomb_sel


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence printf to file descriptor 1 (FAISS's on-disk lists chatter on it, and a CLI
    command's stdout is its JSON); what Python prints goes on through sys.stdout's buffer."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no stdout at all
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def open_base(folder: Path, delta: Any = None, tombstones: Ids | None = None) -> OnDiskIVF:
    """Map a base folder; `delta` (a FAISS IVF-PQ) holds the changes since, else an empty
    one is made from the base's trained structure. Raises ValueError if the folder is
    incomplete or does not hold what its meta file says."""
    faiss = _faiss()
    meta = json.loads((folder / META_FILE).read_text())
    lists = folder / LISTS_FILE
    if lists.stat().st_size != int(meta["lists_bytes"]):
        size = lists.stat().st_size
        raise ValueError(f"{lists.name} is {size} bytes, expected {meta['lists_bytes']}")
    if meta.get("built_in") == str(folder):
        base = faiss.read_index(str(folder / BASE_FILE), faiss.IO_FLAG_READ_ONLY)
    else:  # the home moved: FAISS finds the lists beside the file, and says so with printf
        with _quiet_stdout():
            flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
            base = faiss.read_index(str(folder / BASE_FILE), flags)
    if base.ntotal != int(meta["count"]):
        raise ValueError(f"holds {base.ntotal} vectors, its meta file says {meta['count']}")
    base.parallel_mode = 1
    base_ids = np.load(folder / IDS_FILE, mmap_mode="r")
    if len(base_ids) != base.ntotal:
        raise ValueError(f"{IDS_FILE} holds {len(base_ids)} ids for {base.ntotal} vectors")
    if delta is None:
        delta = empty_delta(folder)
    delta.parallel_mode = 1
    rotation = None
    if (folder / ROTATION_FILE).exists():  # bases built before OPQ have none
        rotation = np.load(folder / ROTATION_FILE).astype(np.float32)
        if rotation.shape != (base.d, base.d):
            raise ValueError(f"{ROTATION_FILE} is {rotation.shape}, not {(base.d, base.d)}")
    margin = float(meta.get("probe_margin", 0.0))  # bases built before it was measured: 0
    return OnDiskIVF(base, folder, base_ids, delta, tombstones, rotation, margin)


def empty_delta(folder: Path) -> Any:
    """An empty in-memory IVF-PQ with a base's trained quantiser and codebooks."""
    faiss = _faiss()
    delta = faiss.read_index(str(folder / TRAINED_FILE))
    delta.set_direct_map_type(faiss.DirectMap.Hashtable)  # removals in O(ids)
    return delta


def prune(place: Path, keep: Path | None) -> None:
    """Remove base folders of the index file `place` that no saved file names: complete
    ones a minute after they were written (a rebuild in another process may be about to
    name its new one), incomplete ones after six hours (one may still be being written).
    A searcher that still maps a removed base keeps reading it: its files live on until
    unmapped."""
    now = time.time()
    for folder in place.parent.glob(f"{place.name}.ondisk-*"):
        if folder == keep or not folder.is_dir():
            continue
        try:
            meta = folder / META_FILE
            age = now - (meta if meta.exists() else folder).stat().st_mtime
        except OSError:
            continue
        if age > (60 if meta.exists() else 6 * 3600):
            shutil.rmtree(folder, ignore_errors=True)
