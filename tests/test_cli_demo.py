"""`pixsearch demo` end to end, the search command's filters, and searches a server answers.

One demo home (60 photos, the shipped tiny model and captioner) serves the whole module;
the tests that need a running server come last and share one `pixsearch demo` process.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.demo import DemoPhoto, plan_demo
from tests.helpers import next_line, run_cli, spawn_cli

COUNT = 60


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(home, what `pixsearch demo --no-serve` said) for a 60-photo demo."""
    from api.cli import main

    home = tmp_path_factory.mktemp("demo") / "home"
    said = io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
        try:
            main(["--home", str(home), "demo", "--count", str(COUNT), "--no-serve"])
        except SystemExit as exc:
            assert not exc.code, said.getvalue()
    yield home, said.getvalue()


@pytest.fixture(scope="module")
def plan(demo_home: tuple[Path, str]) -> dict[str, DemoPhoto]:
    """The demo's ground truth by absolute path."""
    home, _ = demo_home
    return {str(home / "photos" / p.path): p for p in plan_demo(COUNT)}


def _search(capsys: Any, home: Path, *args: str) -> tuple[list[dict[str, Any]], str]:
    res = run_cli(capsys, "-v", "--home", str(home), "--model", "demo", *args, "--json")
    assert res.code == 0, res.err
    return res.json(), res.err  # type: ignore[return-value]


def test_demo_indexes_and_captions_its_photos(demo_home: tuple[Path, str]) -> None:
    home, said = demo_home
    assert f"{COUNT} added" in said and f"{COUNT} captions written (clipcap:demo)" in said
    assert len(list((home / "photos").rglob("*.*"))) == COUNT


def test_index_again_says_nothing_new_and_counts_captions(
    demo_home: tuple[Path, str], capsys: Any
) -> None:
    home, _ = demo_home
    res = run_cli(
        capsys, "--home", str(home), "--model", "demo", "index", "--captions", str(home / "photos")
    )
    assert res.code == 0, res.err
    assert f"{COUNT} unchanged" in res.out and "nothing new" in res.out
    assert "images/s" not in res.out and "0 captions written" in res.out


def test_search_filters(demo_home: tuple[Path, str], plan: dict[str, DemoPhoto], capsys) -> None:
    home, _ = demo_home
    hits, _ = _search(
        capsys, home, "search", "a shape", "-k", "60", "--no-cutoff", "--format", "PNG"
    )
    assert hits and all(plan[h["path"]].format == "png" for h in hits)
    assert len(hits) == sum(p.format == "png" for p in plan.values())

    canon = sum(p.make == "Canon" for p in plan.values())
    hits, _ = _search(
        capsys, home, "search", "a shape", "-k", "60", "--no-cutoff", "--camera", "canon"
    )
    assert len(hits) == canon > 0 and all(plan[h["path"]].make == "Canon" for h in hits)

    hits, err = _search(
        capsys, home, "search", "a shape", "-k", "60", "--no-cutoff", "--after", "2021-01-01",
        "--before", "2021-12-31",
    )  # fmt: skip
    assert hits and all(plan[h["path"]].file_time.year == 2021 for h in hits)
    if any(p.taken_at is None for p in plan.values()):
        assert "no capture date" in err  # said, not silently dropped

    folder = home / "photos" / "2022"
    hits, _ = _search(
        capsys, home, "search", "a shape", "-k", "60", "--no-cutoff", "--folder", str(folder)
    )
    assert hits and all(h["path"].startswith(f"{folder}/") for h in hits)

    hits, _ = _search(
        capsys, home, "search", "a shape", "-k", "60", "--no-cutoff", "--min-width", "1000"
    )
    assert hits and all(h["width"] >= 1000 for h in hits)
    assert len(hits) == sum(p.width >= 1000 for p in plan.values())


def test_search_negatives_captions_and_cutoff(
    demo_home: tuple[Path, str], plan: dict[str, DemoPhoto], capsys
) -> None:
    home, _ = demo_home
    plain, _ = _search(capsys, home, "search", "a circle", "-k", "8", "--no-cutoff")
    pushed, _ = _search(
        capsys, home, "search", "a circle", "-k", "8", "--no-cutoff", "--not", "red"
    )
    reds = [sum(plan[h["path"]].colour == "red" for h in hits) for hits in (plain, pushed)]
    assert reds[1] < reds[0]

    hits, _ = _search(capsys, home, "search", "a star", "-k", "10", "--no-cutoff", "--captions")
    assert all(h["caption"] for h in hits)
    right = sum(plan[h["path"]].shape in h["caption"] for h in hits)
    assert right >= 7  # the captions describe the photos

    everything, _ = _search(capsys, home, "search", "a large red circle", "-k", "60", "--no-cutoff")
    cut, _ = _search(capsys, home, "search", "a large red circle", "-k", "60")  # the default
    assert len(everything) == COUNT and 0 < len(cut) < COUNT
    assert plan[cut[0]["path"]].colour == "red"

    bad = run_cli(capsys, "--home", str(home), "--model", "demo", "search", "x", "--after", "May")
    assert bad.code != 0 and "--after" in bad.err and "Traceback" not in bad.err


def test_a_text_query_loads_only_the_text_tower(demo_home: tuple[Path, str], capsys) -> None:
    from indexer.clip_loading import has_image_tower
    from indexer.encoder import get_encoder
    from indexer.settings import Settings

    home, _ = demo_home
    _search(capsys, home, "search", "a green triangle", "-k", "3")
    encoder = get_encoder(Settings(home=home, model="demo"), text_only=True)
    assert "_loaded" in encoder.__dict__  # this is the encoder that answered
    with pytest.raises(RuntimeError, match="texts only"):
        _ = encoder.preprocess
    model = encoder.torch_model  # None: int8 through ONNX Runtime, its text graph only
    assert model is None or not has_image_tower(model)


def test_a_stale_server_file_is_ignored(
    demo_home: tuple[Path, str], capsys, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that died without removing its file: the command answers by itself."""
    from api.discovery import find_server

    home, _ = demo_home
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    stale = {"url": "http://127.0.0.1:9", "pid": int(gone.stdout), "key_required": False}
    (home / "server.json").write_text(json.dumps({**stale, "model": "pixsearch-tiny-clip/demo"}))
    try:
        assert find_server(home) is None
        hits, _ = _search(capsys, home, "search", "a circle", "-k", "3", "--no-cutoff")
    finally:
        (home / "server.json").unlink()
    assert len(hits) == 3 and "answered by the server" not in caplog.text


# -- with a server running ----------------------------------------------------------------


@pytest.fixture(scope="module")
def served(demo_home: tuple[Path, str]) -> Iterator[str]:
    """`pixsearch demo` on the demo home (already indexed): its URL while it serves."""
    home, _ = demo_home
    proc, lines = spawn_cli({}, "--home", str(home), "demo", "--port", "0")
    said: list[str] = []
    url = None
    while url is None and proc.poll() is None:
        try:
            said.append(next_line(lines, 240))
        except queue.Empty:
            break
        found = re.search(r"serving (http://\S+:\d+)", said[-1])
        url = found.group(1) if found else None
    if url is None:
        proc.kill()
        raise AssertionError("demo did not serve: " + "\n".join(said))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert not (home / "server.json").exists()  # withdrawn when it stopped


def test_demo_serves_the_page_and_finds_photos(served: str) -> None:
    with urllib.request.urlopen(served + "/", timeout=30) as page:
        assert page.status == 200 and "<html" in page.read().decode().lower()
    body = json.dumps({"text": "a red circle", "k": 5, "captions": True}).encode()
    request = urllib.request.Request(
        served + "/search", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as res:
        hits = json.loads(res.read())["results"]
    assert hits and "red" in hits[0]["caption"]


def test_the_server_answers_the_command_line_with_the_same_hits(
    demo_home: tuple[Path, str], served: str, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    home, _ = demo_home
    queries = [
        ("search", "a blue square", "-k", "8", "--not", "small", "--camera", "o"),
        ("search", "a large star", "-k", "5", "--cutoff", "--captions"),
        ("similar", "3", "-k", "6", "--format", "jpeg"),
    ]
    for query in queries:
        caplog.clear()
        remote, _ = _search(capsys, home, *query)
        assert f"answered by the server at {served}" in caplog.text
        caplog.clear()
        (home / "server.json").rename(home / "server.hidden")
        try:
            local, _ = _search(capsys, home, *query)
        finally:
            (home / "server.hidden").rename(home / "server.json")
        assert "answered by the server" not in caplog.text
        assert [h["id"] for h in remote] == [h["id"] for h in local]
        for a, b in zip(remote, local, strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=2e-3)
            assert a.get("caption") == b.get("caption")
