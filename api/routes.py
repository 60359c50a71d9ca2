"""HTTP endpoints. Blocking model and index work runs in the thread pool, off the event loop."""

from __future__ import annotations

import logging
import mimetypes
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from api.schemas import (
    FiltersIn,
    HitOut,
    ImageSearchOptions,
    Ready,
    SearchRequest,
    SearchResponse,
)
from api.security import servable
from api.service import Service
from indexer.errors import ImageTooLarge, InvalidInput, NotFound, UnreadableImage
from indexer.imageio import open_regular
from indexer.thumbnails import thumbnail
from search.query import Query as SearchQuery
from search.query import SearchResult, SortOrder

log = logging.getLogger(__name__)
router = APIRouter()

_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "heif": "image/heif",
    "avif": "image/avif",
}


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def _respond(service: Service, query: SearchQuery) -> SearchResponse:
    result: SearchResult = service.searcher.search(query)
    notices = [result.notice] if result.notice else []
    if query.captions and service.captions is None:
        notices.append(service.captioner_error or "captions are off (PIXSEARCH_CAPTIONER=none)")
    if result.cut_off:
        notices.append(
            "no photo matches this well; ask again without the cut-off for the closest ones"
        )
    return SearchResponse(
        results=[HitOut.of(h) for h in result.hits],
        took_ms=round(result.took_ms, 2),
        cutoff=result.cutoff,
        cut_off=result.cut_off,
        notice="; ".join(notices) or None,
    )


@router.get("/health", tags=["service"])
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", response_model=Ready, tags=["service"])
def ready(request: Request) -> Ready:
    """Readiness: models and index loaded; how many images, which model."""
    service = _service(request)
    images = service.home.image_count() if service.home.exists() else 0
    index = None
    if images and service.home.model_row(service.encoder.key) is not None:
        index = service.searcher.index().kind
    return Ready(
        ready=True,
        images=images,
        model=service.encoder.key,
        index=index,
        captioner=service.captions.name if service.captions else None,
    )


@router.post("/search", response_model=SearchResponse, tags=["search"])
def search(body: SearchRequest, request: Request) -> SearchResponse:
    """Text and/or image query, negatives, filters, paging, reranking, captions."""
    service = _service(request)
    if body.image_id is not None:
        _row(service, body.image_id)  # 404 for an unknown id
    return _respond(service, body.to_query())


def _form_or_query(request: Request, form: dict[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in request.query_params.items() if k != "api_key"}
    merged.update({k: v for k, v in form.items() if v is not None})
    return merged


@router.post("/search/image", response_model=SearchResponse, tags=["search"])
async def search_image(
    request: Request,
    file: Annotated[UploadFile, File(description="A picture; need not be in the collection.")],
    text: Annotated[str | None, Form(max_length=1000)] = None,
    k: Annotated[int | None, Form(ge=1, le=200)] = None,
    offset: Annotated[int | None, Form(ge=0, le=10_000)] = None,
    captions: Annotated[bool | None, Form()] = None,
    rerank: Annotated[str | None, Form()] = None,
    min_score: Annotated[float | None, Form(ge=-1, le=1)] = None,
    cutoff: Annotated[bool | None, Form()] = None,
    sort: Annotated[SortOrder | None, Form()] = None,
    taken_after: Annotated[date | None, Form()] = None,
    taken_before: Annotated[date | None, Form()] = None,
    path_prefix: Annotated[str | None, Form(max_length=4096)] = None,
    camera: Annotated[str | None, Form(max_length=128)] = None,
    min_width: Annotated[int | None, Form(ge=1)] = None,
    min_height: Annotated[int | None, Form(ge=1)] = None,
    format: Annotated[str | None, Form(max_length=16)] = None,
) -> SearchResponse:
    """Query by an uploaded picture (options as form fields or query parameters)."""
    service = _service(request)
    limit = service.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"upload over {limit} bytes")
    raw = _form_or_query(
        request,
        {
            "k": k,
            "offset": offset,
            "captions": captions,
            "rerank": rerank,
            "min_score": min_score,
            "cutoff": cutoff,
            "sort": sort,
            "taken_after": taken_after,
            "taken_before": taken_before,
            "path_prefix": path_prefix,
            "camera": camera,
            "min_width": min_width,
            "min_height": min_height,
            "format": format,
            "text": text,
        },
    )
    filter_keys = set(FiltersIn.model_fields)
    # Every value, from the form or the query string, is validated by the one schema.
    opts_raw = {k_: v for k_, v in raw.items() if k_ in ImageSearchOptions.model_fields}
    opts_raw["filters"] = {k_: v for k_, v in raw.items() if k_ in filter_keys}
    if isinstance(opts_raw.get("rerank"), str) and opts_raw["rerank"].lower() in ("true", "false"):
        opts_raw["rerank"] = opts_raw["rerank"].lower() == "true"
    try:
        opts = ImageSearchOptions.model_validate(opts_raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    query_text = opts.text or None

    def run() -> SearchResponse:
        try:
            vec = service.searcher.embed_image_bytes(data)
        except ImageTooLarge as exc:
            raise HTTPException(413, f"{exc} (uploads: PIXSEARCH_MAX_UPLOAD_PIXELS)") from None
        return _respond(service, opts.to_query(text=query_text, image_vector=vec))

    return await run_in_threadpool(run)


def _row(service: Service, image_id: int, *, serving: bool = False) -> Any:
    if image_id < 1 or image_id > 2**62:
        raise NotFound(f"no indexed image has id {image_id}")
    row = service.home.images_by_id([image_id]).get(image_id)
    if row is None:
        raise NotFound(f"no indexed image has id {image_id}")
    if serving and not servable(row.path, service.home.libraries()):
        raise NotFound(f"image {image_id} is no longer available in an indexed folder")
    if serving and not os.path.isfile(row.path):  # deleted, or a folder now, since indexed
        raise NotFound(f"image {image_id} is no longer a regular file at {row.path}")
    return row


class _OpenedFile(FileResponse):
    """A FileResponse that sends a file opened and checked beforehand: opening its path again
    could meet a FIFO put there since, and block a worker thread for good."""

    def __init__(self, fd: int, path: str, media_type: str) -> None:
        self._fh = os.fdopen(fd, "rb")
        super().__init__(path, media_type=media_type, stat_result=os.fstat(fd))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No `pathsend`: the server would open the path itself.
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if "pathsend" not in k}
        try:
            await super().__call__({**scope, "extensions": extensions}, receive, send)
        finally:
            self._fh.close()

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        self._fh.seek(0)
        yield anyio.AsyncFile(self._fh)


@router.get("/images/{image_id}", tags=["images"], response_class=FileResponse)
def image(image_id: int, request: Request) -> FileResponse:
    """The original file of an indexed image."""
    service = _service(request)
    row = _row(service, image_id, serving=True)
    media = (
        _TYPES.get(row.format) or mimetypes.guess_type(row.path)[0] or "application/octet-stream"
    )
    try:
        fd = open_regular(row.path)
    except UnreadableImage as exc:
        raise NotFound(f"image {image_id} cannot be served: {exc}") from None
    return _OpenedFile(fd, row.path, media)


@router.get(
    "/images/{image_id}/thumbnail",
    tags=["images"],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def image_thumbnail(image_id: int, request: Request) -> Response:
    """A JPEG of at most 256 px, made once and kept in the home."""
    service = _service(request)
    row = _row(service, image_id, serving=True)
    data = thumbnail(
        service.home.path, row.content_hash, row.path, service.settings.max_image_pixels
    )
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
    )


@router.get("/images/{image_id}/similar", response_model=SearchResponse, tags=["search"])
def image_similar(
    image_id: int,
    request: Request,
    k: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
    captions: bool = False,
    cutoff: bool = True,
    sort: SortOrder = "relevance",
) -> SearchResponse:
    """More like this: the image itself comes first, near-duplicates collapse into it."""
    service = _service(request)
    _row(service, image_id)
    query = SearchQuery(
        image_id=image_id, k=k, offset=offset, captions=captions, cutoff=cutoff, sort=sort
    )
    return _respond(service, query)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    """The web page."""
    from api.server import STATIC

    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


__all__ = ["InvalidInput", "router"]
