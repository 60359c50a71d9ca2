"""The collection by date (browsing without a query) and the filter values it holds (facets).

A photo's date is its EXIF capture time; one without (a scan, a screenshot, an export) is
dated by its file's modification time, as `indexer.filters` dates it for the date filters, so
browsing, sorting and filtering agree on where every photo belongs. Both are naive local
times. The date is stored with each row (`Image.shown_at`, indexed), so that a page of the
collection by date is an index walk, not a sort of every row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import String, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from indexer.db import Image, shown_date
from indexer.filters import Filters, conditions
from indexer.home import Home

log = logging.getLogger(__name__)

DateSort = Literal["date", "-date"]
DatedBy = Literal["camera", "file"]


class _Month(FunctionElement[str]):
    """The month of a photo's date as text: '2024-05'."""

    type = String()
    inherit_cache = True
    name = "photo_month"


@compiles(_Month)
def _month_sqlite(element: _Month, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy stores a DateTime in SQLite as text 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return f"substr({compiler.process(Image.__table__.c.shown_at, **kw)}, 1, 7)"


@compiles(_Month, "postgresql")
def _month_postgresql(element: _Month, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char({compiler.process(Image.__table__.c.shown_at, **kw)}, 'YYYY-MM')"


#: The photo's date (capture time, else the file's local time), stored and indexed.
WHEN = Image.shown_at
_MONTH = _Month()


def file_time(mtime_ns: int) -> datetime | None:
    """A file's modification time as a naive local datetime (None where the OS cannot)."""
    return shown_date(None, mtime_ns)


def photo_date(taken_at: datetime | None, mtime_ns: int) -> tuple[datetime | None, DatedBy]:
    """(the date a photo is shown and sorted under, and where that date comes from)."""
    return shown_date(taken_at, mtime_ns), "camera" if taken_at is not None else "file"


@dataclass(frozen=True, slots=True)
class PhotoInfo:
    """What a person wants to know about one photo (the lightbox's panel)."""

    id: int
    path: str
    size: int
    width: int
    height: int
    format: str
    date: datetime | None
    dated_by: DatedBy
    taken_at: datetime | None
    camera_make: str | None
    camera_model: str | None
    gps_lat: float | None
    gps_lon: float | None

    @property
    def folder(self) -> str:
        """The folder holding the file."""
        return os.path.dirname(self.path)

    @property
    def camera(self) -> str | None:
        """Make and model as one label, without the make repeated ("Canon Canon EOS R5")."""
        return camera_label(self.camera_make, self.camera_model)

    @classmethod
    def of(cls, row: Image) -> PhotoInfo:
        """The info of an image row."""
        when, dated_by = photo_date(row.taken_at, row.mtime_ns)
        return cls(
            row.id,
            row.path,
            row.size,
            row.width,
            row.height,
            row.format,
            when,
            dated_by,
            row.taken_at,
            row.camera_make,
            row.camera_model,
            row.gps_lat,
            row.gps_lon,
        )


def camera_label(make: str | None, model: str | None) -> str | None:
    """'Make Model', or just the model when it already names the make."""
    make, model = (make or "").strip(), (model or "").strip()
    if make and model.lower().startswith(make.split()[0].lower()):
        return model
    return " ".join(p for p in (make, model) if p) or None


@dataclass(frozen=True, slots=True)
class MonthCount:
    """How many photos one month holds ('2024-05')."""

    month: str
    count: int


@dataclass(frozen=True, slots=True)
class Undated:
    """Photos without a capture date, for a query with a date filter: dated by file time,
    `matched` of them fall inside the dates and `left_out` outside (otherwise allowed)."""

    count: int
    matched: int
    left_out: int

    def notice(self) -> str | None:
        """One line for the page; None when no photo lacks a date."""
        if not self.count:
            return None
        where = f"{self.matched} fall in these dates, {self.left_out} were left out"
        return f"{self.count} photos have no capture date: dated by file time, {where}"


@dataclass(frozen=True, slots=True)
class BrowsePage:
    """One page of the collection by date, with how many photos the filters allow."""

    items: list[PhotoInfo]
    total: int
    months: list[MonthCount]
    undated: Undated | None


def browse(
    home: Home,
    filters: Filters = Filters(),
    *,
    sort: DateSort = "-date",
    offset: int = 0,
    k: int = 60,
) -> BrowsePage:
    """The photos the filters allow, by date ("-date": newest first), one page of them; the
    first page also counts the photos per month (for a month jumper)."""
    conds = conditions(filters, home)
    key = WHEN.desc() if sort == "-date" else WHEN.asc()
    tie = Image.id.desc() if sort == "-date" else Image.id.asc()
    stmt = select(Image).where(*conds).order_by(key, tie).offset(offset).limit(k)
    with home.session() as s:
        rows = list(s.scalars(stmt))
        total = int(s.scalar(select(func.count()).select_from(Image).where(*conds)) or 0)
    return BrowsePage(
        [PhotoInfo.of(r) for r in rows],
        total,
        month_counts(home, filters) if offset == 0 else [],
        undated(home, filters),
    )


def month_counts(home: Home, filters: Filters = Filters()) -> list[MonthCount]:
    """Photos per month that the filters allow, newest month first."""
    stmt = (
        select(_MONTH, func.count())
        .select_from(Image)
        .where(*conditions(filters, home))
        .group_by(_MONTH)
        .order_by(_MONTH.desc())
    )
    with home.engine.connect() as conn:
        return [MonthCount(m, int(n)) for m, n in conn.execute(stmt) if m]


def undated(home: Home, filters: Filters) -> Undated | None:
    """For filters with a date: the photos without a capture date, matched or left out.
    None without a date filter (nothing is left out for its lack of a date)."""
    if filters.taken_after is None and filters.taken_before is None:
        return None
    no_date = Image.taken_at.is_(None)
    others = conditions(replace(filters, taken_after=None, taken_before=None), home)
    with home.engine.connect() as conn:
        allowed = conn.scalar(select(func.count()).where(no_date, *others).select_from(Image))
        matched = conn.scalar(
            select(func.count()).where(no_date, *conditions(filters, home)).select_from(Image)
        )
    allowed, matched = int(allowed or 0), int(matched or 0)
    return Undated(allowed, matched, allowed - matched)


@dataclass(frozen=True, slots=True)
class ValueCount:
    """One value a filter can take and how many photos have it."""

    value: str
    count: int


@dataclass(frozen=True, slots=True)
class Facets:
    """The filter values that exist in the collection, to offer in the page."""

    total: int
    cameras: list[ValueCount]
    formats: list[ValueCount]
    max_width: int
    max_height: int
    first: datetime | None
    last: datetime | None
    months: list[MonthCount]
    undated: int


def facets(home: Home) -> Facets:
    """Cameras, formats, size and date ranges, photos per month, and how many are undated;
    read once per database generation (the page asks on every load)."""
    return home.per_generation("facets", lambda: _facets(home))


def _facets(home: Home) -> Facets:
    # About a second at 1M photos (the widest and tallest photo are in no index), ten at 10M.
    with home.engine.connect() as conn:
        cams = conn.execute(
            select(Image.camera_make, Image.camera_model, func.count())
            .where((Image.camera_make.is_not(None)) | (Image.camera_model.is_not(None)))
            .group_by(Image.camera_make, Image.camera_model)
        ).all()
        formats = conn.execute(
            select(Image.format, func.count()).group_by(Image.format).order_by(func.count().desc())
        ).all()
        total, max_w, max_h, first, last, no_date = conn.execute(
            select(
                func.count(),
                func.max(Image.width),
                func.max(Image.height),
                func.min(WHEN),
                func.max(WHEN),
                func.count().filter(Image.taken_at.is_(None)),
            ).select_from(Image)
        ).one()
    return Facets(
        int(total or 0),
        _camera_counts(cams),
        [ValueCount(f, int(n)) for f, n in formats],
        int(max_w or 0),
        int(max_h or 0),
        _parse(first),
        _parse(last),
        month_counts(home),
        int(no_date or 0),
    )


def _camera_counts(rows: Iterable[Sequence[object]]) -> list[ValueCount]:
    # Several (make, model) spellings can share a label: their counts add up.
    counts: dict[str, int] = {}
    for make, model, n in rows:
        label = camera_label(str(make) if make else None, str(model) if model else None)
        if label:
            counts[label] = counts.get(label, 0) + int(str(n))
    return [ValueCount(v, n) for v, n in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]


def _parse(text: object) -> datetime | None:
    if isinstance(text, datetime):
        return text
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def order_by_date(home: Home, ids: Sequence[int], *, newest_first: bool = True) -> list[int]:
    """The positions of `ids` ordered by the photos' dates (ties and the undatable last, in
    their given order)."""
    dates: dict[int, datetime | None] = {}
    with home.engine.connect() as conn:
        for start in range(0, len(ids), 900):
            part = [int(i) for i in ids[start : start + 900]]
            stmt = select(Image.id, Image.taken_at, Image.mtime_ns).where(Image.id.in_(part))
            for i, taken, mtime in conn.execute(stmt):
                dates[i] = photo_date(taken, mtime)[0]
    known = [j for j, i in enumerate(ids) if dates.get(i) is not None]
    rest = [j for j, i in enumerate(ids) if dates.get(i) is None]
    # sort() is stable: photos of one moment keep their relevance order.
    known.sort(key=lambda j: dates[ids[j]], reverse=newest_first)  # type: ignore[arg-type,return-value]
    return known + rest
