"""Hostile files in a library: odd names, FIFOs, bombs, files that are not what they say."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import (
    EPS,
    ROOT,
    bomb_png,
    fake_ghostscript,
    make_photos,
    picture,
    run_cli,
    run_subprocess,
)


def test_names_that_are_not_utf8_are_indexed_pruned_and_searched(env, photos: Path, capsys):
    odd = os.fsdecode(os.fsencode(photos) + b"/caf\xe9-\xff.jpg")
    picture(50).save(odd, "JPEG")
    newline = photos / "two\nlines.jpg"
    picture(51).save(newline)
    odd_folder = os.fsdecode(os.fsencode(photos) + b"/\xfe-folder")
    os.mkdir(odd_folder)
    picture(52).save(os.path.join(odd_folder, "inside.jpg"))
    summary = run_cli(capsys, "index", str(photos), "--json").json()
    assert summary["failed"] == [] and summary["added"] == 15
    (photos / "img_0000.jpg").unlink()
    summary = run_cli(capsys, "index", str(photos), "--json").json()
    assert summary["removed"] == 1 and summary["unchanged"] == 14 and summary["failed"] == []

    hits = run_cli(capsys, "search", "--no-cutoff", "a photo", "-k", "20", "--json").json()
    paths = {h["path"] for h in hits}  # --json keeps every name exact
    assert {odd, str(newline), os.path.join(odd_folder, "inside.jpg")} <= paths
    table = run_cli(capsys, "search", "--no-cutoff", "a photo", "-k", "20")
    assert table.code == 0
    lines = table.out.splitlines()
    assert len(lines) == len(hits) + 1  # a header, then one line per hit
    assert any(ln.endswith("/two\\nlines.jpg") for ln in lines)
    assert any(ln.endswith("/caf\\xe9-\\xff.jpg") for ln in lines)
    assert (
        run_cli(capsys, "similar", "--no-cutoff", odd, "-k", "1", "--json").json()[0]["path"] == odd
    )

    # Gone with the folder whose own name is not UTF-8: pruned as well. (A folder that is
    # still there but lists nothing keeps its rows: an unmounted drive looks like that.)
    shutil.rmtree(odd_folder)
    os.unlink(odd)
    summary = run_cli(capsys, "index", str(photos), "--json").json()
    assert summary["removed"] == 2 and summary["failed"] == []


def test_a_bad_file_name_in_the_failed_list_is_one_line(env, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "bad\nname.jpg").write_text("not a picture")
    bad = os.fsdecode(os.fsencode(folder) + b"/\xff.jpg")
    Path(bad).write_text("not a picture")
    res = run_cli(capsys, "index", str(folder))
    assert res.code == 0
    failed = [ln for ln in res.err.splitlines() if ln.startswith("  failed:")]
    assert len(failed) == 2 and any("bad\\nname.jpg" in ln for ln in failed)
    assert any("/\\xff.jpg" in ln for ln in failed)


_NOT_REGULAR = "not a regular file (a FIFO, device or socket)"


@contextmanager
def _unblocked(fifo: Path, after: float = 60.0) -> Iterator[None]:
    """A safety valve, not a timing: if the code under test is stuck opening the FIFO, open
    its other end after a while, so that a failing test ends instead of hanging."""

    def release() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # nobody is waiting on it: nothing to release

    timer = threading.Timer(after, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        release()


def test_a_fifo_swapped_in_after_the_scan_is_listed_and_the_run_ends(
    env, photos: Path, monkeypatch, capsys
) -> None:
    import indexer.pipeline

    victim = photos / "img_0003.jpg"
    original = indexer.pipeline.plan

    def plan_then_swap(*args, **kwargs):
        p = original(*args, **kwargs)
        victim.unlink()
        os.mkfifo(victim)  # the scan saw a photo; the read stage meets a FIFO
        return p

    monkeypatch.setattr(indexer.pipeline, "plan", plan_then_swap)
    with _unblocked(victim):
        res = run_cli(capsys, "index", str(photos), "--json")
    assert res.code == 0, res.err
    summary = res.json()
    assert summary["added"] == 11
    assert summary["failed"] == [{"path": str(victim), "error": _NOT_REGULAR}]


@pytest.mark.parametrize(("error", "reason"), [(MemoryError, "memory"), (KeyError, "KeyError")])
def test_an_error_while_decoding_fails_that_file_only(
    env, photos: Path, monkeypatch, capsys, error: type[Exception], reason: str
) -> None:
    from PIL import PngImagePlugin

    picture(60).save(photos / "big.png")

    def fail(self, *args):
        raise error

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", fail)
    res = run_cli(capsys, "index", str(photos), "--json")
    assert res.code == 0, res.err
    summary = res.json()
    assert summary["added"] == 12
    assert [f["path"] for f in summary["failed"]] == [str(photos / "big.png")]
    assert reason in summary["failed"][0]["error"]


def test_a_row_the_database_refuses_fails_that_file_only(
    env, photos: Path, monkeypatch, capsys
) -> None:
    from indexer.writer import Writer

    assert run_cli(capsys, "index", str(photos)).code == 0
    (photos / "img_0002.jpg").rename(photos / "moved.jpg")
    picture(80).save(photos / "img_0005.jpg")  # changed
    make_photos(photos / "new", 3, start=90)
    upsert = Writer._upsert

    def refuse_one(self, s, p, meta, now):
        if p.job.entry.path.endswith("img_0092.jpg"):  # the batch's last
            raise ValueError("a value the database refuses")
        return upsert(self, s, p, meta, now)

    monkeypatch.setattr(Writer, "_upsert", refuse_one)
    res = run_cli(capsys, "index", str(photos), "--json")
    assert res.code == 0, res.err
    summary = res.json()
    refused = {
        "path": str(photos / "new" / "img_0092.jpg"),
        "error": "cannot be stored: a value the database refuses",
    }
    assert summary["failed"] == [refused]
    # The rest of the batch was stored, and counted once.
    assert (summary["added"], summary["moved"], summary["updated"]) == (2, 1, 1)
    monkeypatch.setattr(Writer, "_upsert", upsert)
    summary = run_cli(capsys, "index", str(photos), "--json").json()
    assert (summary["added"], summary["unchanged"], summary["failed"]) == (1, 14, [])


def test_a_huge_sparse_file_is_refused_before_it_is_read(
    env, photos: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("PIXSEARCH_MAX_IMAGE_PIXELS", "1000000")
    huge = photos / "huge.tif"
    picture(61, (40, 30)).save(huge, "TIFF")  # a valid image, then 300 MB of holes
    with open(huge, "r+b") as fh:
        fh.truncate(300 << 20)
    summary = run_cli(capsys, "index", str(photos), "--json").json()
    assert summary["added"] == 12
    assert [f["path"] for f in summary["failed"]] == [str(huge)]
    assert summary["failed"][0]["error"].startswith("file too large")


def test_over_the_memory_budget_is_refused_before_decoding(monkeypatch) -> None:
    import indexer.imageio as imageio
    from indexer.errors import ImageTooLarge

    monkeypatch.setattr(imageio, "DECODE_BUDGET", 100 << 20)
    data = bomb_png(12_000, 12_000)  # 144 MB as decoded 1-bit pixels, 576 MB as RGB
    with pytest.raises(ImageTooLarge, match="memory"):
        imageio.decode(data, max_pixels=250_000_000)
    # Reduced in its own mode first, it fits: what indexing and thumbnails ask for.
    monkeypatch.setattr(imageio, "DECODE_BUDGET", 400 << 20)
    img, meta = imageio.decode(data, max_pixels=250_000_000, min_side=448)
    assert (meta.width, meta.height) == (12_000, 12_000) and min(img.size) >= 448
    assert img.mode == "RGB" and max(img.size) < 1000


def test_large_decodes_at_once_share_one_memory_budget(monkeypatch) -> None:
    import time

    import indexer.imageio as imageio

    budget = imageio.MemoryBudget(400 << 20)
    monkeypatch.setattr(imageio, "decode_memory", budget)
    data = bomb_png(12_000, 12_000)  # ~290 MB at its peak, reduced as for indexing
    done: list[object] = []
    with budget.hold(200 << 20):  # another decode in flight
        worker = threading.Thread(
            target=lambda: done.append(imageio.decode(data, max_pixels=10**9, min_side=448))
        )
        worker.start()
        deadline = time.monotonic() + 120  # a safety valve: a failing test must end
        while budget.waiting == 0 and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert budget.waiting == 1 and not done  # it waits for its share
    worker.join(120)
    assert len(done) == 1 and budget.used == 0


_PEAK = """
import resource, sys
from api.cli import main
try:
    main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as fh:
        fh.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def _index_peak(folder: Path, home: Path, out: Path, env: dict[str, str]) -> tuple[dict, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, str(out), "index", str(folder), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PIXSEARCH_HOME": str(home), "PIXSEARCH_WORKERS": "1"},
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    return json.loads(proc.stdout), int(out.read_text())


def test_a_bit_bomb_under_the_pixel_limit_is_indexed_in_bounded_memory(
    env, photos: Path, tmp_path: Path
) -> None:
    _, baseline = _index_peak(photos, tmp_path / "home-a", tmp_path / "peak-a", env)
    (photos / "bomb.png").write_bytes(bomb_png(12_000, 12_000))  # 144 MP, 22 KB
    summary, peak = _index_peak(photos, tmp_path / "home-b", tmp_path / "peak-b", env)
    assert summary["added"] == 13 and summary["failed"] == []
    # Decoded: 144 MB of 1-bit pixels and their 8-bit copy, reduced before any RGB copy
    # (the RGB conversion alone took 576 MB, and the model's input array 432 MB more).
    assert peak - baseline < 500 << 20, (peak - baseline) >> 20


def test_eps_named_jpg_never_reaches_ghostscript(env, photos: Path, tmp_path: Path) -> None:
    path, marker = fake_ghostscript(tmp_path / "bin")
    (photos / "drawing.jpg").write_bytes(EPS)
    res = run_subprocess("index", str(photos), "--json", env={"PATH": path})
    assert res.code == 0, res.err
    summary = res.json()
    assert summary["added"] == 12
    assert [f["path"] for f in summary["failed"]] == [str(photos / "drawing.jpg")]
    assert summary["failed"][0]["error"].startswith("not a supported image")
    assert not marker.exists(), "Ghostscript was run on an indexed file"
