"""Saved FAISS index files: atomic writes, and a checksum verified before FAISS reads a byte.

Layout: ``PIXSIDX2``, a 4-byte little-endian header length, the JSON `IndexState`, then the
FAISS serialisation. `IndexState.checksum` is the BLAKE2b-256 of everything after the length
field (the header with its checksum field as zeros, and the payload): a damaged file is
rejected instead of reaching FAISS, whose reader trusts the sizes it reads (zeroed bytes
made it allocate without bound: `std::bad_alloc`). Files of the first layout (``PIXSIDX1``,
no checksum) still open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

MAGIC = b"PIXSIDX2"
LEGACY_MAGIC = b"PIXSIDX1"
_PLACEHOLDER = "0" * 64
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class IndexState:
    """What the header of a saved index records."""

    generation: int
    count: int
    dim: int
    kind: str
    #: How many vectors the index was built (trained) for.
    built: int = 0
    #: The tuned IVF nprobe (0 for exhaustive kinds).
    nprobe: int = 0
    #: An in-memory IVF index's probe margin for texts (`indexer.probing`; 0: none).
    probe_margin: float = 0.0
    #: An on-disk index: its base folder's name (the file holds its delta).
    base: str = ""
    #: An on-disk index: how many tombstoned base ids (int64) follow the FAISS payload.
    tombstones: int = 0
    #: BLAKE2b-256 (hex) of the header with this field zeroed, and the payload.
    checksum: str = ""


class Damaged(ValueError):
    """A saved index file that cannot be trusted."""


def _faiss() -> Any:
    import faiss

    return faiss


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_with(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(fh)` so that a crash leaves either the old file or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write_with(path, write)


def save(path: Path, index: Any, state: IndexState, trailer: bytes = b"") -> None:
    """Write a FAISS index with its state and checksum, atomically, streaming (no copy);
    `trailer` (an on-disk index's tombstones) follows the FAISS payload."""
    faiss = _faiss()
    header = json.dumps(asdict(state) | {"checksum": _PLACEHOLDER}).encode()

    def write(fh: IO[bytes]) -> None:
        digest = hashlib.blake2b(header, digest_size=32)
        fh.write(MAGIC + len(header).to_bytes(4, "little"))
        start = fh.tell()
        fh.write(header)

        def out(data: bytes) -> None:
            digest.update(data)
            fh.write(data)

        faiss.write_index(index, faiss.PyCallbackIOWriter(out))
        out(trailer)
        fh.seek(start)  # the same length: only the zeros change
        fh.write(header.replace(_PLACEHOLDER.encode(), digest.hexdigest().encode(), 1))
        fh.seek(0, os.SEEK_END)

    atomic_write_with(path, write)


def load(path: Path, generation: int) -> tuple[Any, IndexState | None, str]:
    """(FAISS index, its state, "ok") from a saved file, or (None, state or None, why not).

    Any failure to read, the checksum's included, is a reason, never an exception: the
    caller rebuilds from the stored embeddings.
    """
    index, state, why, _ = load_with_trailer(path, generation)
    return index, state, why


def load_with_trailer(path: Path, generation: int) -> tuple[Any, IndexState | None, str, bytes]:
    """`load`, with the bytes that follow the FAISS payload (`IndexState.tombstones` x 8)."""
    trailer = b""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError:
        return None, None, "missing", b""
    except OSError as exc:
        return None, None, f"unreadable ({exc.strerror or exc})", b""
    state: IndexState | None = None
    with fh:
        try:
            magic = fh.read(len(MAGIC))
            if magic not in (MAGIC, LEGACY_MAGIC):
                raise Damaged("not a pixsearch index file")
            size = int.from_bytes(fh.read(4), "little")
            if not 0 < size < 1 << 16:
                raise Damaged("bad header")
            raw = fh.read(size)
            fields = json.loads(raw)
            if not isinstance(fields, dict):
                raise Damaged("bad header")
            state = IndexState(**fields)
            if magic == MAGIC:
                _verify(fh, raw, state)
            elif state.checksum:
                raise Damaged("bad header")
            if state.generation != generation:
                why = f"stale (built at generation {state.generation}, database at {generation})"
                return None, state, why, b""
            index = _faiss().read_index(_faiss().PyCallbackIOReader(fh.read))
            trailer = fh.read(8 * state.tombstones)
            if len(trailer) != 8 * state.tombstones:
                raise Damaged("truncated")
            if fh.read(1):
                raise Damaged("trailing bytes")
        except Exception as exc:  # FAISS's RuntimeError, MemoryError (bad_alloc), JSON's...
            reason = " ".join(str(exc).split())[:80] or type(exc).__name__
            return None, state, f"unreadable ({reason})", b""
    return index, state, "ok", trailer


def _verify(fh: IO[bytes], raw: bytes, state: IndexState) -> None:
    """Check the checksum over the header and the rest of the file, then rewind to the payload."""
    if len(state.checksum) != len(_PLACEHOLDER):
        raise Damaged("bad checksum field")
    start = fh.tell()
    digest = hashlib.blake2b(
        raw.replace(state.checksum.encode(), _PLACEHOLDER.encode(), 1), digest_size=32
    )
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    if digest.hexdigest() != state.checksum:
        raise Damaged("checksum mismatch: the file is damaged")
    fh.seek(start)
