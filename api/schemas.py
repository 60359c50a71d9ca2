"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from api.display import printable
from search.query import Filters, Hit, Query, RerankMode, SortOrder

RerankIn = bool | Literal["none", "standard", "mmr", "generative"]
#: A photo's local time as the camera or the file system records it: no time zone (EXIF has
#: none), so not an RFC 3339 date-time.
LocalTime = Annotated[
    datetime,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$",
            "description": "Local date and time without a time zone: 2024-05-01T14:03:00",
        }
    ),
]
Weight = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class FiltersIn(BaseModel):
    """Metadata filters, applied inside the vector search."""

    model_config = ConfigDict(extra="forbid")

    taken_after: date | None = Field(None, description="Taken on or after this day.")
    taken_before: date | None = Field(None, description="Taken on or before this day.")
    path_prefix: str | None = Field(
        None,
        max_length=4096,
        pattern=r"^\s*([~/][^\x00]*)?$",
        description="Folder (or file): an absolute path, or one starting with ~.",
    )
    camera: str | None = Field(None, max_length=128, description="Camera make or model.")
    min_width: int | None = Field(None, ge=1, le=1_000_000)
    min_height: int | None = Field(None, ge=1, le=1_000_000)
    format: str | None = Field(None, max_length=16, description="jpeg, png, heif...")

    def to_filters(self) -> Filters:
        return Filters(**self.model_dump())


class SearchOptions(BaseModel):
    """Options shared by every kind of query."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(20, ge=1, le=200, description="Results per page.")
    offset: int = Field(0, ge=0, le=10_000, description="Results to skip (paging).")
    filters: FiltersIn = Field(default_factory=FiltersIn)
    rerank: RerankIn = Field(
        True,
        description="true/standard: exact re-score and duplicate collapse; false/none: the "
        "index's order; mmr: plus diversity; generative: plus the captioner's likelihood.",
    )
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0, description="Relevance share in MMR.")
    captions: bool = Field(False, description="Caption the hits (generated once, then stored).")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="Drop hits below this.")
    cutoff: bool = Field(True, description="Drop the irrelevant tail automatically.")
    sort: SortOrder = Field(
        "relevance",
        description="relevance: best first; -date / date: the matches (the best 400 at "
        "most) newest / oldest first.",
    )

    def rerank_mode(self) -> RerankMode:
        if self.rerank is True:
            return "standard"
        if self.rerank is False:
            return "none"
        return self.rerank

    def to_query(self, **what: Any) -> Query:
        """The engine's query: these options applied to `what` is searched for."""
        return Query(
            k=self.k,
            offset=self.offset,
            filters=self.filters.to_filters(),
            rerank=self.rerank_mode(),
            mmr_lambda=self.mmr_lambda,
            min_score=self.min_score,
            cutoff=self.cutoff,
            captions=self.captions,
            sort=self.sort,
            **what,
        )


class ImageSearchOptions(SearchOptions):
    """The options of an upload query, from form fields and query parameters alike."""

    text: str | None = Field(None, max_length=1000, description="Text to combine with it.")


class SearchRequest(SearchOptions):
    """A text and/or image query, with negatives, filters and paging."""

    text: str | None = Field(None, max_length=1000, description="What to look for.")
    image_id: int | None = Field(None, ge=1, le=2**62, description="An indexed image's id.")
    weights: tuple[Weight, Weight] | None = Field(
        None, description="(text, image) weights when both are given; default equal."
    )
    negative: list[str] = Field(
        default_factory=list, max_length=16, description="Texts to push the results away from."
    )

    @model_validator(mode="after")
    def _needs_something(self) -> SearchRequest:
        if not (self.text and self.text.strip()) and self.image_id is None:
            raise ValueError("give a text, an image_id, or both")
        if self.weights is not None and (min(self.weights) < 0 or sum(self.weights) <= 0):
            raise ValueError("weights must be non-negative and not both zero")
        if any(len(n) > 1000 for n in self.negative):
            raise ValueError("negative texts are at most 1000 characters")
        return self

    def to_query(self) -> Query:  # type: ignore[override]
        return super().to_query(
            text=self.text,
            image_id=self.image_id,
            weights=self.weights,
            negative=tuple(self.negative),
        )


class HitOut(BaseModel):
    """One result."""

    id: int
    path: str = Field(description="The file's path; bytes that are not UTF-8 show as \\xNN.")
    score: float
    width: int
    height: int
    taken_at: datetime | None
    date: LocalTime | None = Field(None, description="Capture time, or the file's without one.")
    dated_by: Literal["camera", "file"] = Field("camera", description="Where `date` is from.")
    caption: str | None
    thumbnail_url: str

    @classmethod
    def of(cls, hit: Hit) -> HitOut:
        return cls(
            date=hit.taken_at or hit.file_time,
            dated_by="camera" if hit.taken_at else "file",
            id=hit.id,
            path=printable(hit.path),
            score=round(hit.score, 6),
            width=hit.width,
            height=hit.height,
            taken_at=hit.taken_at,
            caption=hit.caption,
            thumbnail_url=f"/images/{hit.id}/thumbnail",
        )


class SearchResponse(BaseModel):
    """A page of results, best first."""

    results: list[HitOut]
    took_ms: float
    cutoff: float | None = Field(None, description="The score below which hits were dropped.")
    cut_off: bool = Field(
        False,
        description="The automatic cut-off left this first page empty: there are photos, but "
        "none matches well. Ask again with cutoff false for the closest ones.",
    )
    notice: str | None = Field(None, description="Why something asked for is missing.")


class Ready(BaseModel):
    """Readiness: the model and the index are loaded."""

    ready: bool
    images: int
    model: str
    index: str | None
    captioner: str | None
