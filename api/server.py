"""The FastAPI application: an app factory, start-up loading, errors as HTTP answers."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DatabaseError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.limits import BodyLimits
from api.security import HostCheck, KeyGuard
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


#: Swagger UI and ReDoc, served from the fastapi-offline package: FastAPI's own /docs loads
#: them from a CDN, and is a blank page without network.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/docs-assets"

#: One line per request at -v (`pixsearch -v serve`); nothing by default.
access_log = logging.getLogger("api.access")


class AccessLog:
    """ASGI middleware logging method, path, status and milliseconds of each request.

    Plain ASGI rather than `@app.middleware`: it costs nothing while the logger is off. The
    query string is left out: it may carry the API key.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            ms = (time.perf_counter() - started) * 1000
            access_log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, ms)


class HeadAsGet:
    """ASGI middleware answering HEAD like GET, without the body (FastAPI routes take GET only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send(message)
            elif not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b""})

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def create_app(
    settings: Settings | None = None, service: Service | None = None, host: str | None = None
) -> FastAPI:
    """Build the app from settings (default: the PIXSEARCH_* environment).

    `service` is what the app serves, already loaded (`pixsearch serve` loads it first, so that
    a missing model is one line); by default it is loaded at start-up. `host` is the address
    the server binds, a name requests may use besides localhost and the loopback addresses.
    """
    cfg = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models and the index load once, off the event loop.
        app.state.service = service or await run_in_threadpool(Service.start, cfg)
        yield

    app = FastAPI(
        title="pixsearch",
        version="0.1.0",
        lifespan=lifespan,
        description="Search your photos by text or by example.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = cfg
    # Each add_middleware wraps the ones before: listed from the innermost out.
    app.add_middleware(HeadAsGet)
    app.add_middleware(KeyGuard, key=cfg.api_key)
    # Outside the key check, so that a refused request's connection is closed, not left for
    # its body to arrive.
    app.add_middleware(
        BodyLimits,
        max_body=cfg.max_body_bytes,
        max_upload=cfg.max_upload_bytes,
        timeout=cfg.request_timeout,
    )
    if cfg.cors_origins:
        # Outside the key check: preflights need no key, and refusals carry CORS headers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(HostCheck, bound=host, allowed=cfg.allowed_hosts)

    @app.exception_handler(PixsearchError)
    async def domain_error(request: Request, exc: PixsearchError) -> JSONResponse:
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
        return JSONResponse({"detail": str(exc)}, status)

    @app.exception_handler(DatabaseError)
    async def database_error(request: Request, exc: DatabaseError) -> JSONResponse:
        # What the core did not translate (a HomeError) is still the database's fault, not
        # the request's: one line, without the SQL and its parameters.
        reason = " ".join(str(exc.orig or exc).split())[:160]
        log.error("database error on %s %s: %s", request.method, request.url.path, reason)
        return JSONResponse({"detail": f"the database cannot be used: {reason}"}, 503)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, 500)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title="pixsearch API",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            oauth2_redirect_url=None,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title="pixsearch API",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    from api.browse_routes import router as browse_router
    from api.routes import router

    app.include_router(router)
    app.include_router(browse_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    # Added last, so outermost: it also logs what the guards refuse.
    app.add_middleware(AccessLog)
    return app
