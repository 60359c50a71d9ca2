"""Who may ask: the API key, and which files may be served."""

from __future__ import annotations

import hmac
import logging
import os

from fastapi import HTTPException, Request

log = logging.getLogger(__name__)

#: Paths anyone may fetch: liveness, and the page's own static files and the API docs' scripts
#: and styles (they hold no photo data, and the page must load to ask for the key).
OPEN_PATHS = ("/health", "/", "/static/", "/docs-assets/", "/favicon.ico")


def supplied_key(request: Request) -> str | None:
    """The key a request carries: `Authorization: Bearer`, `X-API-Key`, or `?api_key=`."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key") or request.query_params.get("api_key")


def check_key(request: Request, expected: str | None) -> None:
    """Raise 401 unless no key is configured or the request carries the right one."""
    if not expected:
        return
    path = request.url.path
    if path == "/" or any(path.startswith(p) for p in OPEN_PATHS if p != "/"):
        return
    given = supplied_key(request) or ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401,
            "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def servable(path: str, libraries: list[str]) -> bool:
    """Whether a file may be served: it resolves, symbolic links included, inside a library."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError:
        return False
    for lib in libraries:
        root = os.path.realpath(lib)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    import ipaddress

    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
