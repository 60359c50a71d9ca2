"""A derived float16 copy of a model's embeddings, laid out by image row id: exact
re-scoring and "more like this" read it instead of the database.

Layout: ``PIXSVEC1``, a 4-byte little-endian header length, the JSON `StoreState`, zeros up
to `DATA_OFFSET`, then ``rows x dim`` float16 values: row i is image id i (ids are SQLite
row ids, never reused); rows of ids without a vector are zeros. 512-d: 1 KB per image.

The database stays the source of truth. A file that is missing, truncated, damaged or stale
(its generation is not the database's) is rebuilt from it, streaming (a 10M collection's
vectors are never in memory at once), into a temporary file renamed over the old one. An
indexing run keeps the file in step as it writes (`VectorStore.put`, `drop`) and stamps
its generation at each checkpoint (`stamp`), after the rows are on disk.

Rows are read with positional reads, not through a memory mapping: a searcher reads a
thousand scattered rows per query, and the pages a mapping touched stayed in its resident
memory (10M photos: 6 GB of the 10 GB file after 500 queries, and growing). From the page
cache 2,000 rows take 3.4 ms (2.1 ms from pages a mapping already holds); where pages are
missing a read costs a page, a mapped fault far more (1,000 rows with 9% of the file
uncached: 14 ms against 196 ms).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np

from indexer.faiss_ops import Ids
from indexer.indexfile import atomic_write_with
from indexer.types import Embeddings

log = logging.getLogger(__name__)

MAGIC = b"PIXSVEC1"
#: Where the vectors start (a page boundary; the header is far smaller).
DATA_OFFSET = 4096
#: Bytes read at a time when the file is prefetched.
PREFETCH_CHUNK = 8 << 20
_DTYPE = np.dtype("<f2")
#: Rows read by one call at most, for a run of consecutive ids (64 MB at 512 dimensions).
_RUN_ROWS = 1 << 16


@dataclass(frozen=True, slots=True)
class StoreState:
    """What the header of a vector file records."""

    generation: int
    dim: int
    rows: int


def _header(state: StoreState) -> bytes:
    raw = json.dumps(asdict(state)).encode()
    head = MAGIC + len(raw).to_bytes(4, "little") + raw
    return head + bytes(DATA_OFFSET - len(head))


def _read_state(fh: IO[bytes]) -> StoreState:
    if fh.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a pixsearch vector file")
    size = int.from_bytes(fh.read(4), "little")
    if not 0 < size < DATA_OFFSET - 12:
        raise ValueError("bad header")
    fields = json.loads(fh.read(size))
    if not isinstance(fields, dict):
        raise ValueError("bad header")
    return StoreState(**fields)


def read_ahead(
    paths: list[Path], then: Callable[[], object] | None = None
) -> threading.Thread | None:
    """Read files whole, one after the other, on a background thread, so that their pages
    are in the page cache before searches touch them at random (this VM's disk answered
    ~300 random reads a second: at 10M photos a text query took seconds until the 10 GB
    vector file was cached); then call `then`. None (and `then` not run) when together
    they take more than half the machine's memory (they would push each other out)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        size = sum(p.stat().st_size for p in paths)
    except (ValueError, OSError):
        return None
    if not size or size > memory // 2:
        return None

    def read() -> None:
        for path in paths:
            started = time.perf_counter()
            try:
                with open(path, "rb", buffering=0) as fh:
                    while fh.read(PREFETCH_CHUNK):
                        pass
            except OSError as exc:
                log.info("could not prefetch %s: %s", path.name, exc)
                return
            took = time.perf_counter() - started
            log.info("%s read into the page cache in %.1fs", path.name, took)
        if then is not None:
            then()

    thread = threading.Thread(target=read, name="pixsearch-prefetch", daemon=True)
    thread.start()
    return thread


class VectorStore:
    """The rows of one vector file, read with `pread` (`put` and `drop` write them)."""

    def __init__(self, path: Path, state: StoreState) -> None:
        self.path = path
        self.state = state
        self.dim = state.dim
        self._lock = threading.Lock()
        # One descriptor for the store's life: the file it was opened on, even after an
        # atomic rewrite replaces the path (that comes with a new store).
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    @property
    def rows(self) -> int:
        """Rows in the file (the largest id it can hold, plus one)."""
        return self.state.rows

    # -- reading --------------------------------------------------------------------------
    def get(self, ids: Ids) -> tuple[Ids, Embeddings]:
        """(ids that have a vector, their float32 vectors), in the order asked."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        inside = ids[(ids >= 0) & (ids < self.rows)]
        raw = self._read(inside)
        # A removed row is all zero bits; tested on the float16 bytes, 8 at a time where the
        # row allows (6,000 rows of 512: 0.6 ms, where comparing the float32 rows took 1.5).
        words = np.uint64 if raw.shape[1] % 4 == 0 else np.uint16
        present = raw.view(words).any(axis=1)
        if present.all():  # the usual case: no copy of the rows
            return inside, _float32(raw)
        return inside[present], _float32(raw[present])

    def take(self, ids: Ids) -> Embeddings:
        """The rows of ids below `rows`, as float32 (zeros where no vector is stored)."""
        return _float32(self._read(ids))

    def _read(self, ids: Ids) -> np.ndarray:
        row = self.dim * _DTYPE.itemsize
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.zeros((len(ids), self.dim), _DTYPE)
        if not len(ids):
            return out
        # Straight into the array: 2,000 rows took 2.9 ms, as 1 KB bytes objects joined 7.7.
        view = out.data.cast("B")
        # A run of consecutive ids (the photos of one trip, indexed folder by folder, under a
        # date filter) is one read; candidates in score order are single rows.
        # (At most _RUN_ROWS a read: one pread call moves at most 2 GB.)
        at_row = np.arange(len(ids)) % _RUN_ROWS == 0
        starts = np.flatnonzero((np.diff(ids, prepend=ids[:1] - 2) != 1) | at_row)
        ends = np.append(starts[1:], len(ids))
        fd, offsets = self._fd, (DATA_OFFSET + ids[starts] * row).tolist()
        for a, b, at in zip(starts.tolist(), ends.tolist(), offsets, strict=True):
            os.preadv(fd, [view[a * row : b * row]], at)  # past a cut-off end: zeros
        return out

    def block(self, start: int, stop: int) -> Embeddings:
        """Rows start..stop (by id) as float32, in one read."""
        row = self.dim * _DTYPE.itemsize
        out = np.zeros((max(0, min(stop, self.rows) - start), self.dim), _DTYPE)
        view, done = out.data.cast("B"), 0
        while done < len(view):  # until the end, or the end of a file cut short
            got = os.preadv(self._fd, [view[done:]], DATA_OFFSET + start * row + done)
            if got <= 0:
                break
            done += got
        return _float32(out)

    # -- writing (an indexing run) --------------------------------------------------------
    def put(self, ids: Ids, vecs: Embeddings) -> None:
        """Write vectors at their ids' rows (growing the file as needed)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if not len(ids):
            return
        data = np.asarray(vecs, np.float32).reshape(len(ids), self.dim).astype(_DTYPE)
        self._write(ids, data)

    def drop(self, ids: Ids) -> None:
        """Zero the rows of removed ids."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        ids = ids[(ids >= 0) & (ids < self.rows)]
        if len(ids):
            self._write(ids, np.zeros((len(ids), self.dim), _DTYPE))

    def _write(self, ids: Ids, data: np.ndarray) -> None:
        row_bytes = self.dim * _DTYPE.itemsize
        with self._lock, open(self.path, "r+b") as fh:
            rows = max(self.rows, int(ids.max()) + 1)
            if rows > self.rows:
                # Grow by a margin: an indexing run adds a batch at a time.
                rows = max(rows, self.rows + self.rows // 8)
                fh.truncate(DATA_OFFSET + rows * row_bytes)
            for i, row in zip(ids.tolist(), data, strict=True):
                fh.seek(DATA_OFFSET + i * row_bytes)
                fh.write(row.tobytes())
            if rows > self.rows:
                self.state = StoreState(self.state.generation, self.dim, rows)
                fh.seek(0)
                fh.write(_header(self.state))

    def stamp(self, generation: int) -> None:
        """Record that the rows reflect the database at `generation` (after an fsync)."""
        with self._lock, open(self.path, "r+b") as fh:
            os.fsync(fh.fileno())
            self.state = StoreState(generation, self.dim, self.rows)
            fh.write(_header(self.state))
            fh.flush()
            os.fsync(fh.fileno())


def _float32(rows: np.ndarray) -> Embeddings:
    """float16 rows as float32, converted by torch: vectorised, where numpy's `astype` is
    not (2,000 rows of 512: 0.04 ms against 1.7 ms)."""
    import torch

    return torch.from_numpy(rows).float().numpy()


def open_store(path: Path, dim: int, generation: int) -> tuple[VectorStore | None, str]:
    """The vector file if intact and current; else (None, why not)."""
    try:
        with open(path, "rb") as fh:
            state = _read_state(fh)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, TypeError) as exc:
        return None, f"unreadable ({' '.join(str(exc).split())[:80] or type(exc).__name__})"
    if state.dim != dim:
        return None, f"holds vectors of dimension {state.dim}, expected {dim}"
    if size < DATA_OFFSET + state.rows * dim * _DTYPE.itemsize:
        return None, "truncated"
    if state.generation != generation:
        return None, f"stale (written at generation {state.generation}, database at {generation})"
    return VectorStore(path, state), "ok"


def write_store(
    path: Path, dim: int, generation: int, rows: Iterable[tuple[Ids, Embeddings]], top: int
) -> VectorStore:
    """Write a new vector file from (ids, vectors) blocks (ids below `top`), atomically."""
    row_bytes = dim * _DTYPE.itemsize
    count = max(top, 0)

    def write(fh: IO[bytes]) -> None:
        fh.write(_header(StoreState(generation, dim, count)))
        fh.truncate(DATA_OFFSET + count * row_bytes)  # sparse: absent rows read as zeros
        for ids, vecs in rows:
            data = np.asarray(vecs, np.float32).astype(_DTYPE)
            ids = np.asarray(ids, np.int64)
            # Runs of consecutive ids are written in one call.
            breaks = np.flatnonzero(np.diff(ids) != 1) + 1
            for part_ids, part in zip(np.split(ids, breaks), np.split(data, breaks), strict=True):
                if len(part_ids):
                    fh.seek(DATA_OFFSET + int(part_ids[0]) * row_bytes)
                    fh.write(part.tobytes())
        fh.seek(0, os.SEEK_END)

    atomic_write_with(path, write)
    store, why = open_store(path, dim, generation)
    if store is None:  # pragma: no cover - just written
        raise OSError(f"the vector file {path} just written is {why}")
    return store


class StoreRows:
    """`ondisk.RowBlocks` over a vector file: the rows of sorted ids, a block at a time."""

    def __init__(self, store: VectorStore, ids: Ids) -> None:
        self.store = store
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def block(self, start: int, stop: int) -> Embeddings:
        ids = self.ids[start:stop]
        if len(ids) and int(ids[-1]) - int(ids[0]) + 1 == len(ids):  # consecutive: one read
            return self.store.block(int(ids[0]), int(ids[-1]) + 1)
        return self.take(np.arange(start, stop))

    def take(self, positions: np.ndarray) -> Embeddings:
        return self.store.take(self.ids[positions])
