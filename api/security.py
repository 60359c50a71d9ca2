"""Who may ask: the API key, and which files may be served."""

from __future__ import annotations

import hmac
import logging
import os

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

#: Paths anyone may fetch: liveness, and the page's own static files and the API docs' scripts
#: and styles (they hold no photo data, and the page must load to ask for the key).
OPEN_PATHS = ("/health", "/", "/static/", "/docs-assets/", "/favicon.ico")


def supplied_key(request: Request) -> bytes | None:
    """The key a request carries, as bytes: `Authorization: Bearer`, `X-API-Key`, or `?api_key=`.

    Header values are the bytes the client sent (ASGI hands them over as latin-1 text); the query
    parameter is URL-decoded UTF-8. A UTF-8 key thus matches in either place.
    """
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip().encode("latin-1")
    header = request.headers.get("x-api-key")
    if header:
        return header.encode("latin-1")
    query = request.query_params.get("api_key")
    return query.encode("utf-8", "replace") if query else None


def check_key(request: Request, expected: str | None) -> None:
    """Raise 401 unless no key is configured or the request carries the right one."""
    if not expected:
        return
    path = request.url.path
    if path == "/" or any(path.startswith(p) for p in OPEN_PATHS if p != "/"):
        return
    given = supplied_key(request) or b""
    if not hmac.compare_digest(given, expected.encode("utf-8")):
        raise HTTPException(
            401,
            "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )


class KeyGuard:
    """ASGI middleware answering 401 to requests without the API key (see `check_key`).

    Plain ASGI, added inside the CORS middleware: a browser's preflight is answered by CORS
    without the key, and a 401 carries the CORS headers the page needs to read it.
    """

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.key:
            try:
                check_key(Request(scope), self.key)
            except HTTPException as exc:
                refusal = JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


#: Host names a server always answers to: this machine's own.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _host_name(value: str) -> str:
    """The name in a Host header, without port, brackets or final dot, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    if value.count(":") == 1:
        value = value.split(":")[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """ASGI middleware answering 400 to a Host header naming another site (DNS rebinding).

    A page on another site can make the browser send its requests to this server under the
    other site's name, and read the answers; refusing unknown names stops that. Answered:
    localhost and the loopback addresses, the bound address (any IP address when bound to all
    of them: a browser sends an address only to the server it names), and `allowed`.
    """

    def __init__(self, app: ASGIApp, *, bound: str | None, allowed: list[str]) -> None:
        self.app = app
        names = [*LOOPBACK_NAMES, *allowed]
        self.any_ip = bound is not None and _host_name(bound) in ("0.0.0.0", "::", "")
        if bound is not None and not self.any_ip:
            names.append(bound)
        self.any = "*" in names
        self.names = {_host_name(n) for n in names if not n.startswith("*.")}
        self.suffixes = tuple(n.lower()[1:] for n in names if n.startswith("*."))

    def allows(self, host: str) -> bool:
        """Whether a Host header value names this server."""
        name = _host_name(host)
        if not name:
            return False
        return (
            self.any
            or name in self.names
            or name.endswith(self.suffixes)
            or (self.any_ip and _is_ip(name))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.any:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not self.allows(host):
                log.info("refused a request for host %r", host[:100])
                refusal = JSONResponse(
                    {"detail": "invalid host header"}, 400, headers={"Connection": "close"}
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
