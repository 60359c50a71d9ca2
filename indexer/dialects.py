"""What differs between the databases pixsearch runs on, in one place per difference.

Each difference is a small registry keyed by SQLAlchemy's dialect name: adding a database
means adding an entry, not an `if` in every caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, func, literal_column, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert

from indexer.db import Caption

log = logging.getLogger(__name__)

_INSERTS: dict[str, Callable[[Any], Any]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


def insert_ignoring_conflicts(dialect: str, table: Table | type) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING` for the dialect: rows whose key is there are
    left as they are (another writer, or an earlier run, stored them first)."""
    try:
        make = _INSERTS[dialect]
    except KeyError:
        raise NotImplementedError(f"pixsearch does not support {dialect} databases") from None
    stmt: Insert = make(table).on_conflict_do_nothing()
    return stmt


def insert_ignoring(s: Session, table: Table | type, rows: Sequence[dict]) -> None:
    """Insert `rows`, skipping those whose key exists already (see `insert_ignoring_conflicts`)."""
    if rows:
        dialect = s.get_bind().dialect.name
        s.execute(insert_ignoring_conflicts(dialect, table).values(list(rows)))


# -- keyword search over stored captions -------------------------------------------------------
#: (connection, captioner key, words, limit) -> [(content hash, strength)], strongest first;
#: the strength is positive, higher is better.
KeywordSearch = Callable[[Connection, str, list[str], int], list[tuple[str, float]]]


def _fts5(
    conn: Connection, captioner: str, terms: list[str], limit: int
) -> list[tuple[str, float]]:
    match = " OR ".join(f'"{t}"' for t in terms)
    stmt = text(
        "SELECT c.content_hash, bm25(captions_fts) AS rank FROM captions_fts "
        "JOIN captions c ON c.rowid = captions_fts.rowid "
        "WHERE captions_fts MATCH :m AND c.captioner = :cap ORDER BY rank LIMIT :n"
    )
    rows = conn.execute(stmt, {"m": match, "cap": captioner, "n": limit}).all()
    # bm25: lower is better, and negative.
    return [(str(h), -float(rank)) for h, rank in rows]


def _tsvector(
    conn: Connection, captioner: str, terms: list[str], limit: int
) -> list[tuple[str, float]]:
    # Each word through plainto_tsquery (no query syntax to escape), OR-ed like FTS5's query.
    query: ColumnElement[Any] = func.plainto_tsquery("simple", terms[0])
    for term in terms[1:]:
        query = query.op("||")(func.plainto_tsquery("simple", term))
    tsv: ColumnElement[Any] = literal_column("captions.text_tsv")
    rank = func.ts_rank(tsv, query).label("rank")
    stmt = (
        select(Caption.content_hash, rank)
        .where(tsv.op("@@")(query), Caption.captioner == captioner)
        .order_by(rank.desc(), Caption.content_hash)
        .limit(limit)
    )
    return [(str(h), float(r)) for h, r in conn.execute(stmt)]


KEYWORD_SEARCH: dict[str, KeywordSearch] = {"sqlite": _fts5, "postgresql": _tsvector}


def keyword_search(
    conn: Connection, captioner: str, terms: list[str], limit: int
) -> list[tuple[str, float]]:
    """(content hash, strength) of the captions by `captioner` holding any of `terms`."""
    search = KEYWORD_SEARCH.get(conn.dialect.name)
    if search is None or not terms:
        return []
    return search(conn, captioner, terms, limit)
