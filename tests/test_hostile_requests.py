"""Hostile requests: bodies too large or too slow, foreign Host headers, CORS with a key,
HEAD, non-ASCII keys, over-long query parameters."""

from __future__ import annotations

import http.client
import io
import re
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from api.protocol import HeaderDeadline
from api.server import create_app
from tests.helpers import picture, run_cli, spawn_serve


@contextmanager
def serving(env: dict[str, str], *, host: str = "127.0.0.1") -> Iterator[tuple[int, int]]:
    """`pixsearch serve --host HOST --port 0` as a user runs it: (process id, port)."""
    proc, lines = spawn_serve(env, host=host)
    try:
        deadline = time.monotonic() + 180
        seen: list[str] = []
        port = None
        while port is None:
            seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0.1)))
            found = re.search(r"serving http://\S+:(\d+) ", seen[-1])
            port = int(found.group(1)) if found else None
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert found
    return int(found.group(1)) * 1024


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _send_until_answered(
    port: int, head: bytes, first: bytes, filler: bytes, total: int, last: bytes
) -> tuple[int, bytes]:
    """Send a chunked body of about `total` bytes (`first`, then `filler` repeated, then `last`)
    until the server answers; (body bytes sent, the answer's head)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    # A small send buffer: what was sent is close to what the server took in.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sent = 0
    try:
        sock.sendall(head + _chunk(first))
        sent = len(first)
        answered = False
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                answered = True
                break
            try:
                sock.sendall(_chunk(filler))
            except OSError:  # the server answered and closed while we were still sending
                answered = True
                break
            sent += len(filler)
        if not answered:
            sock.sendall(_chunk(last) + b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
        return sent, answer.split(b"\r\n\r\n")[0]
    finally:
        sock.close()


def test_bodies_are_refused_as_they_arrive_whatever_their_length_says(
    env: dict[str, str], photos: Path, capsys
) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    with serving({**env, "PIXSEARCH_MAX_UPLOAD_BYTES": "1000000"}) as (pid, port):
        host = f"Host: 127.0.0.1:{port}\r\n".encode()
        assert httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200
        rss_before = _peak_rss(pid)

        # 64 MB of JSON without a Content-Length: refused once past 1 MB.
        head = (
            b"POST /search HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        filler = b"a" * 65536
        sent, answer = _send_until_answered(
            port, head, b'{"text": "', filler, 64_000_000, b'", "k": 2}'
        )
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        assert b"connection: close" in answer.lower()
        assert sent < 16_000_000, sent

        # A 30 MB chunked upload, refused once past the upload limit (1 MB here).
        boundary = b"pixsearchtestboundary"
        head = (
            b"POST /search/image HTTP/1.1\r\n" + host + b"Content-Type: multipart/form-data; "
            b"boundary=" + boundary + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        first = (
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        last = b"\r\n--" + boundary + b"--\r\n"
        sent, answer = _send_until_answered(port, head, first, filler, 30_000_000, last)
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        assert sent < 16_000_000, sent

        # Neither body was held in memory.
        assert _peak_rss(pid) - rss_before < 24_000_000

        # A Content-Length over the limit is refused before any of the body is sent.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /search HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
                b"Content-Length: 5000000\r\n\r\n"
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")

        # Answered before its body came (405 here, without reading it): closed, not kept open
        # for the client to dribble the rest into.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /health HTTP/1.1\r\n" + host + b"Content-Length: 100\r\n\r\n")
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 405 ") and b"connection: close" in answer.lower()

        # Small bodies still work, with and without a Content-Length.
        body = b'{"text": "a circle", "k": 2}'
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(
                b"POST /search HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(body) + b"0\r\n\r\n"
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        png = io.BytesIO()
        picture(1).save(png, "PNG")
        res = httpx.post(
            f"http://127.0.0.1:{port}/search/image",
            files={"file": ("q.png", png.getvalue(), "image/png")},
            data={"k": "2"},
            timeout=60,
        )
        assert res.status_code == 200, res.text


def test_a_slow_body_is_cut_off_while_others_are_served(
    env: dict[str, str], photos: Path, capsys
) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    with serving({**env, "PIXSEARCH_REQUEST_TIMEOUT": "2"}) as (_pid, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            sock.sendall(
                f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
            )
            # One byte a second; the deadline is 2 s for the whole body.
            dribbled = 0
            answer = b""
            while dribbled < 12 and not answer:
                if select.select([sock], [], [], 1.0)[0]:
                    answer = sock.recv(65536)
                    break
                try:
                    sock.sendall(b" ")
                except OSError:
                    break
                dribbled += 1
                assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
            answer = answer or sock.recv(65536)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 408 "), (dribbled, answer)
        assert dribbled < 10
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200


_PATHS = ["/", "/health", "/ready", "/images/1", "/images/1/thumbnail", "/openapi.json"]


def _status(port: int, path: str, host: str, connect: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(connect, port, timeout=60)
    try:
        conn.request("GET", path, headers={"Host": host})
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def test_only_the_served_host_names_are_answered(env: dict[str, str], photos: Path, capsys) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    extra = {"PIXSEARCH_ALLOWED_HOSTS": '["photos.lan"]'}
    with serving({**env, **extra}, host="127.0.0.2") as (_pid, port):
        for path in _PATHS:
            for bad in ("evil.example", f"evil.example:{port}", "localhost.evil.example", ""):
                status, body = _status(port, path, bad, connect="127.0.0.2")
                assert (status, body) == (400, b'{"detail":"invalid host header"}'), (path, bad)
            for good in (f"localhost:{port}", f"127.0.0.2:{port}", "127.0.0.1", f"[::1]:{port}"):
                assert _status(port, path, good, connect="127.0.0.2")[0] == 200, (path, good)
            assert _status(port, path, "photos.lan", connect="127.0.0.2")[0] == 200, path


def test_host_names_without_a_bound_host(env: dict[str, str], monkeypatch) -> None:
    # The tests' own TestClient host is allowed by the env fixture, never by default.
    monkeypatch.delenv("PIXSEARCH_ALLOWED_HOSTS")
    with TestClient(create_app()) as c:
        assert c.get("/health").status_code == 400
        assert c.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
    # Bound to every address: any IP address may be in the Host header, no other name.
    with TestClient(create_app(host="0.0.0.0"), base_url="http://192.168.1.4:8000") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"Host": "[fe80::1]"}).status_code == 200
        assert c.get("/health", headers={"Host": "evil.example"}).status_code == 400
    monkeypatch.setenv("PIXSEARCH_ALLOWED_HOSTS", '["*"]')
    with TestClient(create_app(), base_url="http://evil.example") as c:
        assert c.get("/health").status_code == 200


def test_cors_preflight_needs_no_key_but_requests_do(env, photos: Path, monkeypatch, capsys):
    run_cli(capsys, "index", str(photos))
    origin = "http://photos.example"
    monkeypatch.setenv("PIXSEARCH_API_KEY", "s3cret")
    monkeypatch.setenv("PIXSEARCH_CORS_ORIGINS", f'["{origin}"]')
    with TestClient(create_app()) as c:
        pre = c.options(
            "/search",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type",
            },
        )
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == origin
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
        # Without the key: 401, which the page can read (CORS headers on the error too).
        res = c.get("/ready", headers={"Origin": origin})
        assert res.status_code == 401
        assert res.headers["access-control-allow-origin"] == origin
        res = c.get("/ready", headers={"Origin": origin, "X-API-Key": "s3cret"})
        assert res.status_code == 200
        assert res.headers["access-control-allow-origin"] == origin
        # An origin not listed gets no preflight answer and no CORS headers.
        pre = c.options(
            "/search",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 400
        assert "access-control-allow-origin" not in pre.headers


def test_a_non_ascii_key_matches_wherever_it_is_given(env, monkeypatch) -> None:
    key = "clé-🔑"
    monkeypatch.setenv("PIXSEARCH_API_KEY", key)
    raw = key.encode()
    with TestClient(create_app()) as c:
        assert c.get("/ready", headers={"X-API-Key": raw}).status_code == 200
        assert c.get("/ready", headers={"Authorization": b"Bearer " + raw}).status_code == 200
        assert c.get("/ready", params={"api_key": key}).status_code == 200
        assert c.get("/ready", headers={"X-API-Key": "clé-🔑".encode("utf-16")}).status_code == 401
        assert c.get("/ready", headers={"X-API-Key": b"cl\xe9-"}).status_code == 401
        assert c.get("/ready").status_code == 401


def test_head_answers_like_get_without_a_body(env, photos: Path, capsys) -> None:
    run_cli(capsys, "index", str(photos))
    with TestClient(create_app()) as c:
        for path in ("/", "/health", "/ready", "/images/1", "/images/1/thumbnail"):
            got = c.get(path)
            head = c.head(path)
            assert (head.status_code, got.status_code) == (200, 200), path
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            assert int(head.headers["content-length"]) == len(got.content), path
        assert c.head("/search").status_code == 405


def test_serve_bounds_connections_and_idle_time(env, monkeypatch) -> None:
    import uvicorn

    from api import cli

    calls: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: calls.append(self.config))
    monkeypatch.setenv("PIXSEARCH_MAX_CONNECTIONS", "7")
    cli.main(["serve", "--host", "127.0.0.3", "--port", "8765"])
    config = calls[0]
    assert config.limit_concurrency == 7
    assert config.timeout_keep_alive == 5
    # Request headers have a deadline too (slowloris): PIXSEARCH_HEADER_TIMEOUT, 10 s.
    assert isinstance(config.http, type) and issubclass(config.http, HeaderDeadline)
    assert config.http.header_timeout == 10
    # The bound host is one the app answers to.
    with TestClient(config.app, base_url="http://127.0.0.3:8765") as c:  # type: ignore[arg-type]
        assert c.get("/health").status_code == 200
