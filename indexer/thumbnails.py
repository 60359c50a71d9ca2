"""Thumbnails: at most 256 px, made once per file content and kept in the home."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

from indexer.imageio import decode, max_file_bytes, read_file
from indexer.indexfile import atomic_write

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256

#: The reasons already logged for not keeping thumbnails (said once, not per request).
_said: set[str] = set()
_said_lock = threading.Lock()


def thumbnail(home_path: Path, content_hash: str, source: str, max_pixels: int) -> bytes:
    """The JPEG thumbnail of a file's content: the kept one, else made now and kept.

    Returned as bytes, read whole: a kept file deleted while it is being served cannot
    cut an answer short. When it cannot be kept (a full disk, a read-only or vanished
    folder) it is served all the same.
    """
    folder = home_path / "thumbnails" / content_hash[:2]
    path = folder / f"{content_hash}.jpg"
    try:
        data = path.read_bytes()
    except OSError:  # not made yet, or its folder is gone
        data = b""
    if _complete(data):
        return data
    img, _ = decode(
        read_file(source, max_file_bytes(max_pixels)),
        max_pixels=max_pixels,
        min_side=THUMBNAIL_SIZE,
    )
    img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, optimize=True)
    data = buf.getvalue()
    _keep(folder, path, data)
    return data


def _complete(data: bytes) -> bool:
    """Whether `data` is a whole JPEG (start and end markers), not an empty or cut file."""
    return data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"


def _keep(folder: Path, path: Path, data: bytes) -> None:
    """Save a thumbnail (temporary file, then rename: never seen half-written)."""
    for _ in range(3):  # the folder may be deleted between its making and the write
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
            return
        except FileNotFoundError:
            continue
        except OSError as exc:
            _say_once(f"cannot keep thumbnails in {folder.parent}: {exc.strerror or exc}")
            return
    _say_once(f"cannot keep thumbnails in {folder.parent}: it keeps vanishing")


def _say_once(message: str) -> None:
    with _said_lock:
        if message in _said:
            return
        _said.add(message)
    log.warning("%s; serving them without keeping them", message)
