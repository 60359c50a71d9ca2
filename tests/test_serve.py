"""`pixsearch serve` as users run it, and the API docs without network."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.server import create_app
from tests.helpers import next_line, run_cli, run_subprocess, spawn_serve


@pytest.mark.parametrize("verbose", [False, True])
def test_serve_says_where_once_ready_and_logs_requests_at_v(
    env: dict[str, str], photos: Path, capsys, verbose: bool
) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    proc, lines = spawn_serve(env, *(["-v"] if verbose else []))
    try:
        deadline = time.monotonic() + 180
        url = None
        before: list[str] = []
        while url is None and time.monotonic() < deadline:
            line = next_line(lines, deadline - time.monotonic())
            found = re.fullmatch(
                r"pixsearch: serving (http://127\.0\.0\.1:\d+) \(API docs: /docs\)", line
            )
            url = found.group(1) if found else None
            before.append(line)
        assert url is not None, before
        if not verbose:
            assert before == [f"pixsearch: serving {url} (API docs: /docs)"]
        # Ready when it says so: models and index are loaded.
        assert httpx.get(f"{url}/ready").json()["images"] == 12
        assert "<html" in httpx.get(f"{url}/").text.lower()
        assert httpx.get(f"{url}/no-such-page").status_code == 404
        if verbose:
            wanted = [
                rf"pixsearch: INFO: GET {re.escape(path)} {status} \d+\.\d ms"
                for path, status in (("/ready", 200), ("/", 200), ("/no-such-page", 404))
            ]
            seen: list[str] = []
            while wanted:
                seen.append(next_line(lines, 30))
                wanted = [w for w in wanted if not re.fullmatch(w, seen[-1])]
        else:
            time.sleep(0.5)
            assert lines.empty(), lines.get()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_without_the_model_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    res = run_subprocess("serve", "--port", "0", env={"PIXSEARCH_PRETRAINED": str(missing)})
    assert res.code == 1
    assert res.err == f"pixsearch: error: checkpoint file {missing} does not exist\n"


_REFERENCE = re.compile(r"""(?:src|href|spec-url)="([^"]+)"|url: '([^']+)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_everything_from_the_server(
    env: dict[str, str], monkeypatch, page: str
) -> None:
    monkeypatch.setenv("PIXSEARCH_API_KEY", "s3cret")
    with TestClient(create_app()) as c:
        html = c.get(page, headers={"X-API-Key": "s3cret"})
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert "http://" not in html.text and "https://" not in html.text
        refs = {a or b for a, b in _REFERENCE.findall(html.text)}
        assert "/openapi.json" in refs and len(refs) >= 3, refs
        kinds = set()
        for ref in refs - {"/openapi.json"}:
            assert ref.startswith("/docs-assets/"), ref
            # Without the key, like the page's own static files.
            asset = c.get(ref)
            assert asset.status_code == 200, ref
            kind = asset.headers["content-type"].split(";")[0]
            kinds.add(kind)
            assert len(asset.content) > 1000, ref
        assert "text/javascript" in kinds or "application/javascript" in kinds, kinds
        if page == "/docs":
            assert "text/css" in kinds, kinds
