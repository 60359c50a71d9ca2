"""Small read-only lookups that the search side needs (SQL stays in `indexer/`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import func, select, text

from indexer.db import Image
from indexer.home import Home

log = logging.getLogger(__name__)


def id_range(home: Home) -> tuple[int, int] | None:
    """(lowest, highest) image id, or None when nothing is indexed."""
    # Two scalar subqueries: SQLite answers a lone min() or max() from the primary key, but
    # both in one SELECT scan the whole table (10M photos: 1.5 GB, seconds to minutes).
    lowest = select(func.min(Image.id)).scalar_subquery()
    highest = select(func.max(Image.id)).scalar_subquery()
    with home.engine.connect() as conn:
        lo, hi = conn.execute(select(lowest, highest)).one()
    return None if lo is None else (int(lo), int(hi))


def ids_by_path(home: Home) -> dict[str, int]:
    """Every indexed image's id by its path."""
    with home.engine.connect() as conn:
        return {str(p): int(i) for p, i in conn.execute(select(Image.path, Image.id))}


def ids_by_content_hash(home: Home, hashes: Iterable[str]) -> list[tuple[int, str]]:
    """(image id, content hash) of the images whose content hash is one of `hashes`."""
    wanted = list(dict.fromkeys(hashes))
    out: list[tuple[int, str]] = []
    with home.engine.connect() as conn:
        for start in range(0, len(wanted), 900):
            part = wanted[start : start + 900]
            stmt = select(Image.id, Image.content_hash).where(Image.content_hash.in_(part))
            out.extend((int(i), str(h)) for i, h in conn.execute(stmt))
    return out


def database_bytes(home: Home) -> int:
    """The database's size: its file's (SQLite), or the server's figure (PostgreSQL)."""
    path = home.db_file
    if path is not None:
        return path.stat().st_size if path.exists() else 0
    if home.dialect != "postgresql":
        return 0
    with home.engine.connect() as conn:
        return int(conn.scalar(text("SELECT pg_database_size(current_database())")) or 0)
