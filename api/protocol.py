"""uvicorn's HTTP/1.1 protocol with a deadline for request headers (slow clients, slowloris)."""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 28\r\nconnection: close\r\n\r\nrequest headers not received"
)


class HeaderDeadline(H11Protocol):
    """Closes a connection whose request headers are not complete in time.

    uvicorn has no such deadline: a client sending a header byte now and then holds its
    connection for ever, and enough of them hold every connection `limit_concurrency` allows.
    The clock starts when the connection opens, and again when a response ends; after a
    response it gives at least uvicorn's `timeout_keep_alive`, which closes a connection that
    sends nothing. It stops once the headers are in: the body has its own deadline
    (`api.limits.BodyLimits`). A client cut off mid-headers gets 408; one that sent nothing
    is closed silently, as uvicorn closes idle connections.
    """

    header_timeout: float = 10.0
    _header_task: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers(self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers(self.header_timeout)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._stop_header_clock()
        self._watch_headers(max(self.header_timeout, self.timeout_keep_alive))

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def _watch_headers(self, seconds: float) -> None:
        """Start the clock while a request's headers are awaited (if not running), else stop it."""
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            self._stop_header_clock()
        elif self._header_task is None:
            self._header_task = self.loop.call_later(seconds, self._headers_timed_out)

    def _stop_header_clock(self) -> None:
        if self._header_task is not None:
            self._header_task.cancel()
            self._header_task = None

    def _headers_timed_out(self) -> None:
        self._header_task = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial, _closed = self.conn.trailing_data
        if partial:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("%s: request headers not received within %g s", client, self.header_timeout)
            self.transport.write(_TIMED_OUT)
        self._unset_keepalive_if_required()
        self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def header_deadline(seconds: float) -> type[HeaderDeadline]:
    """The protocol class for `uvicorn.Config(http=...)`, giving headers `seconds` to arrive."""

    class Protocol(HeaderDeadline):
        header_timeout = seconds

    return Protocol
