"""Metadata filters as SQL: the ids a `Filters` allows (the store's side of a query's filters).

Dates: a photo without an EXIF capture date (a scan, a screenshot, an edited export) is dated
by its file's modification time, as file managers and photo apps do, rather than dropped by
every date filter.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Connection, Select, and_, false, func, or_, select

from indexer.db import Image
from indexer.errors import InvalidInput
from indexer.filter_sql import date_window
from indexer.home import Home
from indexer.types import Filters
from indexer.vectors import Ids

log = logging.getLogger(__name__)

#: Ids drawn to estimate a broad filter's share of the collection (`allowed_share`): 2,000
#: put the estimate within about 0.02 of the true share.
SHARE_SAMPLE = 2_000
#: Broad filters remembered per database generation (`allowed`), at most.
BROAD_KEPT = 256

_FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff", "heic": "heif"}


def _start(d: date | datetime) -> datetime:
    return d if isinstance(d, datetime) else datetime.combine(d, time.min)


def _ns(moment: datetime) -> int:
    """A naive local datetime as the file-time scale (ns since the epoch, within int64)."""
    try:
        ns = int(moment.timestamp() * 1_000_000_000)
    except (OverflowError, ValueError, OSError):  # year 1 or 9999 in some time zones
        ns = -(2**63) if moment.year < 1970 else 2**63 - 1
    return max(-(2**63), min(2**63 - 1, ns))


def _on_or_after(moment: datetime) -> ColumnElement[bool]:
    return or_(
        Image.taken_at >= moment,
        and_(Image.taken_at.is_(None), Image.mtime_ns >= _ns(moment)),
    )


def _before(moment: datetime, inclusive: bool) -> ColumnElement[bool]:
    if inclusive:
        return or_(
            Image.taken_at <= moment,
            and_(Image.taken_at.is_(None), Image.mtime_ns <= _ns(moment)),
        )
    return or_(
        Image.taken_at < moment,
        and_(Image.taken_at.is_(None), Image.mtime_ns < _ns(moment)),
    )


def folder_prefix(path: str) -> str:
    """The absolute form of a folder filter; `InvalidInput` for a relative one (relative to
    what? the server's working folder means nothing to whoever sends the query)."""
    expanded = os.path.expanduser(path.strip())
    if not os.path.isabs(expanded):
        raise InvalidInput(f"the folder filter must be an absolute path, not '{path}'")
    return os.path.normpath(expanded)


def conditions(f: Filters, home: Home) -> list[ColumnElement[bool]]:
    """SQL conditions for the filters that are set (`home`: the collection they apply to)."""
    conds: list[ColumnElement[bool]] = []
    start = _start(f.taken_after) if f.taken_after is not None else None
    end, inclusive = None, False
    if f.taken_before is not None:
        # A date means the whole day; a datetime means that instant.
        if isinstance(f.taken_before, datetime):
            end, inclusive = f.taken_before, True
        elif f.taken_before < date.max:
            end = _start(f.taken_before) + timedelta(days=1)
        # else: the last day there is has no next day; every photo is taken before its end
    if start is not None or end is not None:
        conds.append(date_window(start, end, inclusive=inclusive, to_ns=_ns))
    if f.path_prefix:
        prefix = folder_prefix(f.path_prefix)
        folder = prefix.rstrip(os.sep) + os.sep
        upper = folder[:-1] + chr(ord(os.sep) + 1)
        conds.append(or_(Image.path == prefix, (Image.path >= folder) & (Image.path < upper)))
    if f.camera:
        conds.append(_camera_condition(home, f.camera))
    if f.min_width:
        conds.append(Image.width >= f.min_width)
    if f.min_height:
        conds.append(Image.height >= f.min_height)
    if f.format:
        fmt = f.format.replace("\x00", "").strip().lower().lstrip(".")
        conds.append(Image.format == _FORMAT_ALIASES.get(fmt, fmt))
    return conds


def _camera_condition(home: Home, camera: str) -> ColumnElement[bool]:
    """Photos whose camera's make, model or both ("Canon EOS R6") contain `camera`, any case.

    A substring test in SQL reads every row (seconds at ten million photos); a collection
    holds a few hundred cameras at most, so they are matched here and the rows found by the
    (make, model) index."""
    needle = camera.replace("\x00", "").strip().lower()
    wanted = [
        (make, model)
        for make, model in camera_pairs(home)
        if any(needle in text.lower() for text in _camera_texts(make, model))
    ]
    if not wanted:
        return false()
    return or_(
        *(and_(_same(Image.camera_make, mk), _same(Image.camera_model, md)) for mk, md in wanted)
    )


def _camera_texts(make: str | None, model: str | None) -> list[str]:
    texts = [t for t in (make, model) if t is not None]
    return [*texts, f"{make} {model}"] if len(texts) == 2 else texts


def _same(column: Any, value: str | None) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def camera_pairs(home: Home) -> list[tuple[str | None, str | None]]:
    """The collection's distinct (camera make, model) pairs, with a camera, read once per
    database generation (one pass over the camera index)."""

    def read() -> list[tuple[str | None, str | None]]:
        with home.engine.connect() as conn:
            rows = conn.execute(
                select(Image.camera_make, Image.camera_model)
                .where(Image.camera_make.is_not(None) | Image.camera_model.is_not(None))
                .distinct()
            ).all()
        return [(r[0], r[1]) for r in rows]

    return home.per_generation("camera_pairs", read)


def allowed_ids(home: Home, f: Filters, limit: int | None = None) -> Ids | None:
    """Ids of the images the filters allow, sorted; None when more than `limit` are (a
    broad filter at ten million photos would allow millions: test candidates with
    `Allowed.among` instead)."""
    # Unordered: with ORDER BY and LIMIT a database may walk the id order and test every
    # row; without, it reads the filter's own index and stops after `limit`.
    stmt = select(Image.id).where(*conditions(f, home))
    if limit is not None:
        stmt = stmt.limit(limit + 1)
    with home.engine.connect() as conn:
        # Counted in the database first: a broad filter's ids would be read only to be
        # dropped (one camera of three at ten million photos: 250,001 ids, 127 ms; counted,
        # 26 ms).
        if limit is not None and _count(conn, stmt) > limit:
            return None
        # The driver's fetchall, not SQLAlchemy's row-by-row iteration: a broad filter
        # allows tens of thousands of ids, and per-row Python held the GIL ~28 ms per query
        # (12k ids), stalling every other request of the server.
        rows = conn.execute(stmt).cursor.fetchall()
    if limit is not None and len(rows) > limit:  # rows added between the two statements
        return None
    return np.sort(np.array(rows, dtype=np.int64).reshape(-1))


def _count(conn: Connection, stmt: Select[Any]) -> int:
    return int(conn.execute(select(func.count()).select_from(stmt.subquery())).scalar() or 0)


def allowed_share(home: Home, f: Filters, sample: int = SHARE_SAMPLE) -> float | None:
    """An estimate of the share of the collection the filters allow, from `sample` ids
    drawn at random over the id range (None when too few of them are photos)."""
    with home.engine.connect() as conn:
        # Two statements: SQLite reads one end of the primary key only for a lone min or max
        # (both in one statement scan the table).
        low = conn.scalar(select(func.min(Image.id)))
        high = conn.scalar(select(func.max(Image.id)))
        if low is None or high is None:
            return None
        # Seeded: the same filters get the same estimate, and so the same candidates.
        draws = np.random.default_rng(0).integers(int(low), int(high) + 1, sample)
        probe = np.unique(draws)
        present = conn.scalar(select(func.count()).select_from(Image).where(id_in(home, probe)))
    if not present or present < len(probe) // 10:  # ids mostly gone: too few to tell
        return None
    return len(Allowed(home, f, None).among(probe)) / int(present)


@dataclass(frozen=True)
class Allowed:
    """What a query's filters allow: every id (`ids`, sorted) when they allow few enough to
    read, else None there, and candidates are tested against the filters in SQL."""

    home: Home
    filters: Filters
    ids: Ids | None
    #: The share of the collection allowed, estimated (`allowed_share`) where `ids` is None.
    share: float | None = None

    def among(self, ids: Ids) -> Ids:
        """Those of `ids` the filters allow, in their order."""
        if self.ids is not None:
            return ids[np.isin(ids, self.ids)]
        ok: list[int] = []
        conds = conditions(self.filters, self.home)
        # Sorted, in as few statements as the database takes parameters: the rows are then
        # read in key order (20,000 candidates: 41 ms, against 101 ms 900 at a time).
        todo = np.unique(ids)
        step = max(1, len(todo)) if _json_ids(self.home) else _most_parameters(self.home)
        with self.home.engine.connect() as conn:
            for start in range(0, len(todo), step):
                stmt = select(Image.id).where(id_in(self.home, todo[start : start + step]), *conds)
                ok.extend(r[0] for r in conn.execute(stmt).cursor.fetchall())
        return ids[np.isin(ids, np.asarray(ok, np.int64))]


def id_in(home: Home, ids: Ids) -> ColumnElement[bool]:
    """`Image.id IN ids`; on SQLite the ids go as one JSON array (`json_each`): a list of
    literals costs SQLAlchemy ~3 us an id to compile (26,000 candidates: 75 ms a query)."""
    if _json_ids(home):
        each = func.json_each(json.dumps(np.asarray(ids, np.int64).tolist())).table_valued("value")
        return Image.id.in_(select(each.c.value))
    return Image.id.in_([int(i) for i in ids])


def _json_ids(home: Home) -> bool:
    return home.dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 38)  # JSON built in


def _most_parameters(home: Home) -> int:
    """Ids one IN (...) may hold, leaving room for the filters' own parameters."""
    if home.dialect == "postgresql" or sqlite3.sqlite_version_info >= (3, 32):
        return 30_000  # PostgreSQL takes 65,535 parameters, SQLite since 3.32 32,766
    return 900  # older SQLite: 999


def allowed(home: Home, f: Filters, limit: int) -> Allowed:
    """What the filters allow, reading at most `limit` ids (see `Allowed`).

    That a filter is broad, and its estimated share, are kept until the database changes:
    counting and sampling took 24 + 21 ms of a one-camera query at ten million photos (on a
    busy machine), and a user browsing with a camera or format filter set asks it again and
    again."""
    broad: dict[tuple[Filters, int], float | None] = home.per_generation("broad_filters", dict)
    if (f, limit) in broad:
        return Allowed(home, f, None, broad[(f, limit)])
    ids = allowed_ids(home, f, limit)
    if ids is not None:
        return Allowed(home, f, ids)
    if len(broad) >= BROAD_KEPT:
        broad.clear()
    share = broad[(f, limit)] = allowed_share(home, f)
    return Allowed(home, f, None, share)


def count_undated(home: Home) -> int:
    """How many photos have no capture date (date filters use their file's time)."""
    with home.engine.connect() as conn:
        stmt = select(func.count()).select_from(Image).where(Image.taken_at.is_(None))
        return int(conn.scalar(stmt) or 0)


def undated_notice(home: Home) -> list[str]:
    """A note for date filters: photos without a capture date are matched by file date."""
    n = count_undated(home)
    if not n:
        return []
    return [f"{n} photos have no capture date; the date filter used their file date"]
