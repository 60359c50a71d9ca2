"""Browsing endpoints: the collection by date, one photo's details, the filter values."""

from __future__ import annotations

import logging
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from api.display import printable
from api.schemas import FiltersIn, LocalTime
from api.service import Service
from indexer import browse as store
from indexer.errors import NotFound

log = logging.getLogger(__name__)
router = APIRouter()


class PhotoOut(BaseModel):
    """One photo and what is known of it."""

    id: int
    path: str = Field(description="The file's path; bytes that are not UTF-8 show as \\xNN.")
    name: str
    folder: str
    size: int = Field(description="File size in bytes.")
    width: int
    height: int
    format: str
    date: LocalTime | None = Field(description="Capture time, or the file's time without one.")
    dated_by: Literal["camera", "file"] = Field(description="Where `date` comes from.")
    month: str | None = Field(description="The month it is grouped under: 2024-05.")
    taken_at: LocalTime | None = Field(description="EXIF capture time, if any.")
    camera: str | None
    camera_make: str | None
    camera_model: str | None
    gps_lat: float | None
    gps_lon: float | None
    thumbnail_url: str
    url: str

    @classmethod
    def of(cls, p: store.PhotoInfo) -> PhotoOut:
        path = printable(p.path)
        return cls(
            id=p.id,
            path=path,
            name=path.rsplit("/", 1)[-1],
            folder=printable(p.folder),
            size=p.size,
            width=p.width,
            height=p.height,
            format=p.format,
            date=p.date,
            dated_by=p.dated_by,
            month=p.date.strftime("%Y-%m") if p.date else None,
            taken_at=p.taken_at,
            camera=p.camera,
            camera_make=p.camera_make,
            camera_model=p.camera_model,
            gps_lat=p.gps_lat,
            gps_lon=p.gps_lon,
            thumbnail_url=f"/images/{p.id}/thumbnail",
            url=f"/images/{p.id}",
        )


class MonthOut(BaseModel):
    """Photos in one month."""

    month: str = Field(description="YYYY-MM")
    count: int


class UndatedOut(BaseModel):
    """Photos without a capture date, under a date filter (dated by their file's time)."""

    count: int = Field(description="Photos without a capture date the other filters allow.")
    matched: int = Field(description="Of those, how many the file's time puts in the dates.")
    left_out: int = Field(description="Of those, how many the date filter left out.")


class BrowseResponse(BaseModel):
    """A page of the collection by date."""

    items: list[PhotoOut]
    total: int = Field(description="Photos the filters allow, all pages together.")
    offset: int
    months: list[MonthOut] = Field(
        description="Photos per month the filters allow, newest first (on the first page)."
    )
    undated: UndatedOut | None = Field(None, description="Only with a date filter.")
    notice: str | None = None


class ValueOut(BaseModel):
    """A filter value and how many photos have it."""

    value: str
    count: int


class FacetsOut(BaseModel):
    """The values the filters can take in this collection."""

    total: int
    cameras: list[ValueOut]
    formats: list[ValueOut]
    max_width: int
    max_height: int
    first: LocalTime | None = Field(description="The oldest photo's date.")
    last: LocalTime | None = Field(description="The newest photo's date.")
    months: list[MonthOut] = Field(description="Photos per month, newest first.")
    undated: int = Field(description="Photos without a capture date (dated by file time).")


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


@router.get("/images", response_model=BrowseResponse, tags=["images"])
def browse(
    request: Request,
    sort: Literal["-date", "date"] = "-date",
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    k: Annotated[int, Query(ge=1, le=200)] = 60,
    taken_after: date | None = None,
    taken_before: date | None = None,
    path_prefix: Annotated[str | None, Query(max_length=4096)] = None,
    camera: Annotated[str | None, Query(max_length=128)] = None,
    min_width: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    min_height: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    format: Annotated[str | None, Query(max_length=16)] = None,
) -> BrowseResponse:
    """The collection without a query, by date ("-date": newest first), with the filters of
    /search; photos without a capture date are dated by their file's time."""
    try:
        filters = FiltersIn(
            taken_after=taken_after,
            taken_before=taken_before,
            path_prefix=path_prefix,
            camera=camera,
            min_width=min_width,
            min_height=min_height,
            format=format,
        ).to_filters()
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    service = _service(request)
    if not service.home.exists():
        return BrowseResponse(items=[], total=0, offset=offset, months=[])
    page = store.browse(service.home, filters, sort=sort, offset=offset, k=k)
    undated = page.undated
    return BrowseResponse(
        items=[PhotoOut.of(p) for p in page.items],
        total=page.total,
        offset=offset,
        months=[MonthOut(month=m.month, count=m.count) for m in page.months],
        undated=None
        if undated is None
        else UndatedOut(count=undated.count, matched=undated.matched, left_out=undated.left_out),
        notice=undated.notice() if undated else None,
    )


@router.get("/images/{image_id}/info", response_model=PhotoOut, tags=["images"])
def image_info(image_id: int, request: Request) -> PhotoOut:
    """One photo's details: date, camera, size, folder, GPS position."""
    service = _service(request)
    row = None
    if 0 < image_id <= 2**62:
        row = service.home.images_by_id([image_id]).get(image_id)
    if row is None:
        raise NotFound(f"no indexed image has id {image_id}")
    return PhotoOut.of(store.PhotoInfo.of(row))


@router.get("/facets", response_model=FacetsOut, tags=["images"])
def facets(request: Request) -> FacetsOut:
    """The cameras, formats, sizes and months that exist in the collection."""
    service = _service(request)
    if not service.home.exists():
        return FacetsOut(
            total=0,
            cameras=[],
            formats=[],
            max_width=0,
            max_height=0,
            first=None,
            last=None,
            months=[],
            undated=0,
        )
    f = store.facets(service.home)
    return FacetsOut(
        total=f.total,
        cameras=[ValueOut(value=v.value, count=v.count) for v in f.cameras],
        formats=[ValueOut(value=v.value, count=v.count) for v in f.formats],
        max_width=f.max_width,
        max_height=f.max_height,
        first=f.first,
        last=f.last,
        months=[MonthOut(month=m.month, count=m.count) for m in f.months],
        undated=f.undated,
    )
