"""Hostile requests and files swapped under a running server: bombs, FIFOs, EPS, odd names."""

from __future__ import annotations

import ctypes
import gc
import os
import re
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
from fastapi.testclient import TestClient

from api.server import create_app
from tests.helpers import (
    EPS,
    bomb_png,
    fake_ghostscript,
    next_line,
    picture,
    run_cli,
    spawn_serve,
)


def _image_id(path: str) -> int:
    from indexer.home import Home
    from indexer.settings import Settings

    row = Home(Settings()).image_by_path(path)
    assert row is not None, path
    return row.id


def test_a_name_that_is_not_utf8_is_searched_and_served(env, photos: Path, capsys) -> None:
    odd = os.fsdecode(os.fsencode(photos) + b"/caf\xe9.jpg")
    picture(70).save(odd, "JPEG")
    assert run_cli(capsys, "index", str(photos)).code == 0
    image_id = _image_id(odd)
    with TestClient(create_app()) as c:
        res = c.post("/search", json={"text": "a photo", "k": 20, "cutoff": False})
        assert res.status_code == 200, res.text
        shown = {h["id"]: h["path"] for h in res.json()["results"]}
        assert shown[image_id].endswith("/caf\\xe9.jpg")
        original = c.get(f"/images/{image_id}")
        assert original.status_code == 200
        assert original.content == Path(odd).read_bytes()
        part = c.get(f"/images/{image_id}", headers={"Range": "bytes=2-9"})
        assert part.status_code == 206 and part.content == Path(odd).read_bytes()[2:10]
        assert c.get(f"/images/{image_id}/thumbnail").status_code == 200
        assert c.get(f"/images/{image_id}/similar?k=3").status_code == 200


def test_a_photo_swapped_for_a_fifo_never_blocks_the_server(
    env: dict[str, str], photos: Path, capsys
) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    victim = photos / "img_0001.jpg"
    image_id = _image_id(str(victim))
    proc, lines = spawn_serve(env)
    try:
        line = next_line(lines, 180)
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert found, line
        url = found.group(1)
        victim.unlink()
        os.mkfifo(victim)
        paths = [f"/images/{image_id}", f"/images/{image_id}/thumbnail"] * 40

        def get(path: str) -> httpx.Response:
            return httpx.get(url + path, timeout=60)

        with ThreadPoolExecutor(len(paths)) as pool:
            answers = list(pool.map(get, paths))
        assert {a.status_code for a in answers} <= {400, 404}
        assert all("regular file" in a.json()["detail"] for a in answers)
        assert httpx.get(f"{url}/health", timeout=60).json() == {"status": "ok"}
        res = httpx.post(f"{url}/search", json={"text": "a photo"}, timeout=60)
        assert res.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) is not None
    finally:
        for _ in range(3):  # wake any thread stuck opening the FIFO, so the server can end
            try:
                os.close(os.open(victim, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def _rss_growth() -> Iterator[list[int]]:
    """[peak, end] growth of this process's resident memory over the block, in bytes."""
    me = psutil.Process()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # a clean start: what earlier tests freed
    base = me.memory_info().rss
    seen = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen[0] = max(seen[0], me.memory_info().rss - base)
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        stop.set()
        sampler.join()
        gc.collect()
        seen[1] = me.memory_info().rss - base


def test_upload_bombs_are_refused_or_decoded_in_bounded_memory(env, photos, capsys) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    over = bomb_png(15_000, 15_000)  # 225 MP, under the indexing limit, over the upload one
    under = bomb_png(7_000, 7_000)  # 49 MP: allowed, 196 MB as RGB
    with TestClient(create_app()) as c:
        assert c.get("/ready").status_code == 200
        with _rss_growth() as grew:
            res = c.post("/search/image", files={"file": ("bomb.png", over, "image/png")})
        assert res.status_code == 413, res.text
        assert "megapixels" in res.json()["detail"]
        assert "PIXSEARCH_MAX_UPLOAD_PIXELS" in res.json()["detail"]
        assert grew[0] < 100 << 20, grew
        with _rss_growth() as grew:
            res = c.post("/search/image", files={"file": ("bomb.png", under, "image/png")})
        assert res.status_code == 200, res.text
        # The decoded 1-bit pixels and their 8-bit copy (49 MB each), reduced before any
        # RGB copy; and the memory is handed back once the request is done.
        assert grew[0] < 250 << 20 and grew[1] < 100 << 20, grew


def test_an_eps_upload_never_reaches_ghostscript(
    env, photos, tmp_path: Path, monkeypatch, capsys
) -> None:
    from PIL import EpsImagePlugin

    path, marker = fake_ghostscript(tmp_path / "bin")
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # looked up again, on our PATH
    assert run_cli(capsys, "index", str(photos)).code == 0
    with TestClient(create_app()) as c:
        res = c.post("/search/image", files={"file": ("x.jpg", EPS, "image/jpeg")})
    assert res.status_code == 400, res.text
    assert res.json()["detail"].startswith("not a supported image")
    assert not marker.exists(), "Ghostscript was run on an upload"


def test_links_to_photos_are_followed_and_links_to_devices_refused(
    env, photos: Path, capsys
) -> None:
    (photos / "sub").mkdir()
    link = photos / "sub" / "link.jpg"
    link.symlink_to(photos / "img_0004.jpg")
    (photos / "zero.jpg").symlink_to("/dev/zero")
    summary = run_cli(capsys, "index", str(photos), "--json").json()
    assert summary["added"] == 13
    assert summary["failed"] == [{"path": str(photos / "zero.jpg"), "error": "not a regular file"}]
    image_id = _image_id(str(link))
    with TestClient(create_app()) as c:
        original = c.get(f"/images/{image_id}")
        assert original.status_code == 200
        assert original.content == (photos / "img_0004.jpg").read_bytes()
        assert c.get(f"/images/{image_id}/thumbnail").status_code == 200
