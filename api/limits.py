"""Request bodies: how large and how slow they may be, counted as they arrive."""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

#: Room for an upload's form fields and multipart framing beyond the file itself.
FORM_OVERHEAD = 64_000

#: A body may take one more second per this many bytes: large uploads over slow links get the
#: time they need, a client dribbling a few bytes does not.
MIN_RATE = 100_000

_CLOSE = (b"connection", b"close")


class BodyRefused(HTTPException):
    """A body over its limit (413) or too slow (408); raised from `receive`."""


class BodyLimits:
    """ASGI middleware that counts request body bytes as `receive` hands them over.

    Over the limit or past the deadline, the request is answered 413 or 408 and the connection
    closed, whatever Content-Length said or whether there was one: nothing is read beyond the
    limit, so nothing is buffered. Multipart uploads get `max_upload` (plus the form's
    overhead), every other body `max_body`.
    """

    def __init__(self, app: ASGIApp, *, max_body: int, max_upload: int, timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload + FORM_OVERHEAD
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        limit = self.max_upload if multipart else self.max_body
        length = headers.get(b"content-length", b"")
        has_body = b"transfer-encoding" in headers or length not in (b"", b"0")
        if length.isdigit() and int(length) > limit:
            await _refuse(send, 413, f"request body over {limit} bytes")
            return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        received = 0
        complete = not has_body
        refused: BodyRefused | None = None
        started = False

        async def counted() -> Message:
            nonlocal received, deadline, complete, refused
            if complete or refused:
                # After the body, receive only reports a disconnect: no deadline for that.
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                refused = BodyRefused(408, f"request body not sent within {self.timeout:g} s")
                log.info("%s %s: %s", scope["method"], scope["path"], refused.detail)
                raise refused from None
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                received += chunk
                deadline += chunk / MIN_RATE
                if received > limit:
                    refused = BodyRefused(413, f"request body over {limit} bytes")
                    log.info("%s %s: %s", scope["method"], scope["path"], refused.detail)
                    raise refused
                complete = not message.get("more_body", False)
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if refused is not None:
                # Whatever the app made of the exception, the client gets the refusal.
                if not started:
                    started = True
                    await _refuse(send, refused.status_code, str(refused.detail))
                return
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not complete and _CLOSE not in headers:
                    # Answered before the whole body came: close rather than read the rest.
                    message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        try:
            await self.app(scope, counted, answer)
        except BodyRefused:
            if refused is None:
                raise
        if refused is not None and not started:
            await _refuse(send, refused.status_code, str(refused.detail))


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        _CLOSE,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
