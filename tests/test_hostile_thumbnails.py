"""Thumbnails on a full, read-only or vanishing disk (issue 15)."""

from __future__ import annotations

import errno
import io
import shutil
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api.server import create_app
from tests.helpers import make_photos, run_cli, start_serve
from tests.test_concurrency import ALL, HUNG, serving


def _whole_jpeg(body: bytes) -> tuple[int, int]:
    assert body[-2:] == b"\xff\xd9", "cut short"
    img = Image.open(io.BytesIO(body))
    assert img.format == "JPEG"
    img.load()  # a truncated file fails here
    return img.size


def test_unwritable_thumbnails_folder_still_serves_them(env, photos: Path, capsys) -> None:
    run_cli(capsys, "index", str(photos))
    thumbs = Path(env["PIXSEARCH_HOME"]) / "thumbnails"
    thumbs.mkdir()
    thumbs.chmod(0o555)
    proc, url = start_serve(env, bound=True)
    try:
        with httpx.Client(base_url=url, timeout=HUNG) as http:
            ids = [h["id"] for h in http.post("/search", json=ALL).json()["results"]]
            for image_id in ids[:3] * 2:
                answer = http.get(f"/images/{image_id}/thumbnail")
                assert answer.status_code == 200, answer.text
                assert answer.headers["content-type"] == "image/jpeg"
                assert max(_whole_jpeg(answer.content)) <= 256
    finally:
        proc.terminate()
        proc.wait(30)
        thumbs.chmod(0o755)
    assert list(thumbs.iterdir()) == []


def test_a_full_disk_still_serves_thumbnails(
    env, photos: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from indexer import thumbnails

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(thumbnails, "atomic_write", full)
    run_cli(capsys, "index", str(photos))
    with serving(create_app()) as base, httpx.Client(base_url=base, timeout=HUNG) as http:
        ids = [h["id"] for h in http.post("/search", json=ALL).json()["results"]]
        for image_id in ids:
            answer = http.get(f"/images/{image_id}/thumbnail")
            assert answer.status_code == 200, answer.text
            _whole_jpeg(answer.content)


def test_thumbnails_folder_deleted_under_load(env, tmp_path: Path, capsys) -> None:
    """Every answer is a 200 with a whole JPEG while the folder is deleted again and again."""
    folder = tmp_path / "many"
    make_photos(folder, 24)
    run_cli(capsys, "index", str(folder))
    thumbs = Path(env["PIXSEARCH_HOME"]) / "thumbnails"
    done = threading.Event()
    failures: list[str] = []
    served = [0]

    def delete() -> None:
        while not done.is_set():
            shutil.rmtree(thumbs, ignore_errors=True)

    with serving(create_app()) as base:
        with httpx.Client(base_url=base, timeout=HUNG) as http:
            ids = [h["id"] for h in http.post("/search", json=ALL).json()["results"]]

        def fetch(offset: int) -> None:
            with httpx.Client(base_url=base, timeout=HUNG) as own:
                for round_ in range(6):
                    for image_id in ids[offset:] + ids[:offset]:
                        try:
                            answer = own.get(f"/images/{image_id}/thumbnail")
                            assert answer.status_code == 200, answer.text
                            _whole_jpeg(answer.content)
                            served[0] += 1
                        except (AssertionError, httpx.HTTPError, OSError) as exc:
                            failures.append(f"{image_id} round {round_}: {exc!r}")

        deleter = threading.Thread(target=delete)
        deleter.start()
        workers = [threading.Thread(target=fetch, args=(i * 6,)) for i in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(HUNG)
        done.set()
        deleter.join(HUNG)
    assert failures == []
    assert served[0] == 4 * 6 * 24
