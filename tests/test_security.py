"""Exposure: the API key, and serving only indexed files inside indexed folders."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi.testclient import TestClient

from api.security import is_loopback
from api.server import create_app
from tests.helpers import picture, run_cli


def test_api_key_guards_everything_but_health(env, photos: Path, monkeypatch, capsys) -> None:
    run_cli(capsys, "index", str(photos))
    monkeypatch.setenv("PIXSEARCH_API_KEY", "s3cret")
    with TestClient(create_app()) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200  # the page loads, then asks for the key
        for method, url in (
            ("get", "/ready"),
            ("get", "/images/1"),
            ("get", "/images/1/thumbnail"),
            ("get", "/images"),
            ("get", "/images/1/info"),
            ("get", "/facets"),
            ("get", "/openapi.json"),
            ("post", "/search"),
        ):
            assert getattr(c, method)(url).status_code == 401, url
        body = {"text": "x", "k": 2}
        assert c.post("/search", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/search", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        auth = {"Authorization": "Bearer s3cret"}
        assert c.post("/search", json=body, headers=auth).status_code == 200
        assert c.get("/images/1/thumbnail?api_key=s3cret").status_code == 200


def test_only_indexed_files_inside_libraries_are_served(
    env, photos: Path, tmp_path: Path, capsys
) -> None:
    run_cli(capsys, "index", str(photos))
    secret = tmp_path / "secret.jpg"
    picture(3).save(secret)
    with TestClient(create_app()) as c:
        hits = c.post("/search", json={"text": "x", "k": 1, "cutoff": False}).json()["results"]
        target = Path(hits[0]["path"])
        assert c.get(f"/images/{hits[0]['id']}").status_code == 200
        # Swap the indexed file for a symbolic link leading out of the library.
        target.unlink()
        target.symlink_to(secret)
        assert c.get(f"/images/{hits[0]['id']}").status_code == 404
        for url in (
            "/images/..%2f..%2fetc%2fpasswd",
            "/images/%2e%2e/%2e%2e/etc/passwd",
            "/images/1%2f..%2f..%2fsecret.jpg",
            "/static/..%2f..%2fpyproject.toml",
            "/static/../../pyproject.toml",
        ):
            res = c.get(url)
            assert res.status_code in (404, 422), (url, res.status_code)
            assert b"[project]" not in res.content


def test_serve_warns_loudly_on_open_address(env, caplog, monkeypatch) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    import uvicorn

    from api import cli

    calls: list[uvicorn.Config] = []
    # Nothing is bound: the test checks what serve says and what it would start.
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: calls.append(self.config))
    with caplog.at_level(logging.WARNING):
        cli.main(["serve", "--host", "0.0.0.0", "--port", "8765"])
    assert calls and calls[0].host == "0.0.0.0"
    assert any("WITHOUT AN API KEY" in r.getMessage() for r in caplog.records)
