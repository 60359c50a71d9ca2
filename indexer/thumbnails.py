"""Thumbnails: at most 256 px, made once per file content and kept in the home."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from indexer.imageio import decode, max_file_bytes, read_file
from indexer.vectors import atomic_write

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256


def thumbnail(home_path: Path, content_hash: str, source: str, max_pixels: int) -> Path:
    """The cached thumbnail of a file's content, made now if missing."""
    folder = home_path / "thumbnails" / content_hash[:2]
    path = folder / f"{content_hash}.jpg"
    if path.is_file():
        return path
    data = read_file(source, max_file_bytes(max_pixels))
    img, _ = decode(data, max_pixels=max_pixels, min_side=THUMBNAIL_SIZE)
    img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, optimize=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())
    return path
