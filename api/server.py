"""The FastAPI application: an app factory, start-up loading, errors as HTTP answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api.security import check_key
from api.service import Service
from indexer.errors import (
    HomeError,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    PixsearchError,
    UnreadableImage,
)
from indexer.settings import Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

_STATUS: list[tuple[type[PixsearchError], int]] = [
    (NotFound, 404),
    (UnreadableImage, 400),
    (InvalidInput, 400),
    (ModelUnavailable, 503),
    (HomeError, 503),
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app from settings (default: the PIXSEARCH_* environment)."""
    cfg = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models and the index load once, off the event loop.
        app.state.service = await run_in_threadpool(Service.start, cfg)
        yield

    app = FastAPI(
        title="pixsearch",
        version="0.1.0",
        lifespan=lifespan,
        description="Search your photos by text or by example.",
    )
    app.state.settings = cfg
    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )

    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        try:
            check_key(request, cfg.api_key)
        except HTTPException as exc:
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > cfg.max_upload_bytes + 64_000:
            return JSONResponse({"detail": f"request body over {cfg.max_upload_bytes} bytes"}, 413)
        return await call_next(request)

    @app.exception_handler(PixsearchError)
    async def domain_error(request: Request, exc: PixsearchError) -> JSONResponse:
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
        return JSONResponse({"detail": str(exc)}, status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, 500)

    from api.routes import router

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
