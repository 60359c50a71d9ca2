"""Slow request headers (slowloris): cut off after PIXSEARCH_HEADER_TIMEOUT, while requests
whose headers came in time, slow bodies and keep-alive connections are left alone."""

from __future__ import annotations

import select
import socket
import time

import httpx

from tests.test_hostile_requests import serving

_SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (after a 408 or without a word); reads what came."""
    # poll, not select: a test process may hold descriptors past select's limit of 1024.
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        while poller.poll(0):
            data = sock.recv(65536)
            if not data:
                return True
            assert data.startswith(b"HTTP/1.1 408 "), data
    except ConnectionResetError:
        return True
    return False


def _dribble(sock: socket.socket) -> bool:
    """Send one more header byte; False once the server has closed the connection."""
    if _closed(sock):
        return False
    try:
        sock.sendall(b"a")
    except OSError:
        return False
    return True


def test_headers_sent_slowly_are_cut_off_while_others_are_served(env: dict[str, str]) -> None:
    with serving({**env, "PIXSEARCH_HEADER_TIMEOUT": "2"}) as (_pid, port):
        url = f"http://127.0.0.1:{port}/health"
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            start = time.monotonic()
            sock.sendall(_SLOW_HEAD)
            # One header byte per 0.5 s, for at most 12 s: the deadline is 2 s.
            for _ in range(24):
                time.sleep(0.5)
                if not _dribble(sock):
                    break
                assert httpx.get(url, timeout=10).status_code == 200
            elapsed = time.monotonic() - start
            for _ in range(20):
                if _closed(sock):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("the slow client was never cut off")
        finally:
            sock.close()
        assert 1.5 < elapsed < 5, elapsed
        assert httpx.get(url, timeout=10).status_code == 200

        # More slow clients than PIXSEARCH_MAX_CONNECTIONS (100) allows: the server refuses
        # others only until the deadline cuts them off.
        crowd = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(120)]
        try:
            for each in crowd:
                each.sendall(_SLOW_HEAD)
            open_ = list(crowd)
            deadline = time.monotonic() + 8
            while open_ and time.monotonic() < deadline:
                time.sleep(0.5)
                open_ = [each for each in open_ if _dribble(each)]
            assert not open_, len(open_)
            assert httpx.get(url, timeout=10).status_code == 200
        finally:
            for each in crowd:
                each.close()


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send `request` and read its answer, head and Content-Length body."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head


def test_keep_alive_and_slow_bodies_outlast_the_header_deadline(env: dict[str, str]) -> None:
    with serving({**env, "PIXSEARCH_HEADER_TIMEOUT": "2"}) as (_pid, port):
        get = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            assert _exchange(sock, get).startswith(b"HTTP/1.1 200 ")
            time.sleep(1)
            assert _exchange(sock, get).startswith(b"HTTP/1.1 200 ")
            # Idle past the header deadline but within the keep-alive time (5 s): still open.
            time.sleep(3)
            assert _exchange(sock, get).startswith(b"HTTP/1.1 200 ")

        # Headers in time, the body over 3 s (within PIXSEARCH_REQUEST_TIMEOUT): answered.
        body = b'{"text": "a circle", "k": 2}'
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            )
            for i in range(0, len(body), 10):
                time.sleep(1)
                sock.sendall(body[i : i + 10])
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 "), answer
        assert not answer.startswith(b"HTTP/1.1 408 "), answer
