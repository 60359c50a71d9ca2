"""Folder watching: `pixsearch watch` keeps the index matching the folder as photos come and
go, in few runs, with moved photos keeping their ids; the debouncer's timing rules."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    DirModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from indexer.debounce import Debouncer
from indexer.imageio import IMAGE_EXTENSIONS
from indexer.watch import Relevance
from tests.helpers import ROOT, make_photos, picture

#: Only a safety net against a hung child: the test waits for states, not for times.
HUNG = 120.0


# -- the debouncer, on a fake clock ---------------------------------------------------------------
def test_a_burst_of_events_is_one_run_after_the_quiet_period() -> None:
    d = Debouncer(quiet=1.5, max_delay=30.0)
    assert d.due_in(0.0) is None
    t = 100.0
    for i in range(5000):  # a copy of 5,000 photos, one event every millisecond
        d.add(["/photos"], t + i * 0.001)
        assert d.due_in(t + i * 0.001) == pytest.approx(1.5)
    last = t + 4.999
    assert d.due_in(last + 1.0) == pytest.approx(0.5)
    assert d.due_in(last + 1.5) == 0.0
    assert d.take() == {"/photos"}
    assert d.due_in(last + 2.0) is None


def test_a_copy_that_never_ends_is_indexed_at_the_maximum_delay() -> None:
    d = Debouncer(quiet=1.5, max_delay=30.0)
    t = 0.0
    while t < 29.5:  # an event every second: never 1.5 s of quiet
        d.add(["/photos"], t)
        assert d.due_in(t) and d.due_in(t) > 0  # type: ignore[operator]
        t += 1.0
    d.add(["/photos"], 30.0)
    assert d.due_in(30.0) == 0.0
    assert d.take() == {"/photos"}
    # Events during the run start a new window, counted from the first of them.
    d.add(["/photos", "/more"], 31.0)
    assert d.due_in(31.0) == pytest.approx(1.5)
    assert d.take() == {"/photos", "/more"}


def test_a_failed_run_is_tried_again_after_the_delay_not_before() -> None:
    d = Debouncer(quiet=1.5, max_delay=30.0)
    d.defer(["/photos"], 10.0, 30.0)
    d.add(["/other"], 12.0)  # an event meanwhile does not hurry the retry
    assert d.due_in(20.0) == pytest.approx(20.0)
    assert d.due_in(40.0) == 0.0
    assert d.take() == {"/photos", "/other"}
    d.add(["/photos"], 41.0)
    assert d.due_in(41.0) == pytest.approx(1.5)  # the retry delay is gone with the run
    assert not d.add([], 42.0) and d.pending == {"/photos"}


# -- which events count ---------------------------------------------------------------------------
def test_events_the_indexer_would_ignore_start_no_run(tmp_path: Path) -> None:
    root = str(tmp_path / "photos")
    home = tmp_path / "photos" / "pixsearch-home"  # a home inside the watched folder
    counts = Relevance(root, home, include_hidden=False)
    photo = f"{root}/2024/img.jpg"
    assert counts(FileCreatedEvent(photo))
    assert counts(FileClosedEvent(f"{root}/IMG.HEIC"))
    assert counts(FileDeletedEvent(photo))
    assert counts(DirCreatedEvent(f"{root}/2025"))
    # Renamed into a photo name (a download's temporary name), or out of one.
    assert counts(FileMovedEvent(f"{root}/img.jpg.part", photo))
    assert counts(FileMovedEvent(photo, f"{root}/img.jpg.bak"))
    assert not counts(FileCreatedEvent(f"{root}/notes.txt"))
    assert not counts(FileCreatedEvent(f"{root}/.hidden.jpg"))
    assert not counts(FileCreatedEvent(f"{root}/.cache/x/img.jpg"))
    assert not counts(FileCreatedEvent(f"{home}/thumbnails/1.jpg"))
    assert not counts(FileOpenedEvent(photo))  # reading a photo changes nothing
    assert not counts(DirModifiedEvent(f"{root}/2024"))
    assert Relevance(root, home, include_hidden=True)(FileCreatedEvent(f"{root}/.h/img.jpg"))


# -- `pixsearch watch`, as a user runs it ---------------------------------------------------------
class Watching:
    """`pixsearch watch FOLDER` in a subprocess, its output lines collected as they come."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "watch", str(folder)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()
        self.db = Path(env["PIXSEARCH_HOME"]) / "pixsearch.db"

    @staticmethod
    def _read(stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line.rstrip("\n"))

    def wait_for(self, ready: Callable[[], bool], what: str) -> float:
        """Seconds until `ready()`; fails if the process ends or hangs first."""
        started = time.monotonic()
        while not ready():
            assert self.proc.poll() is None, f"watch ended: {self.err[-10:]}"
            assert time.monotonic() - started < HUNG, f"never {what}: {self.err[-10:]}"
            time.sleep(0.05)
        return time.monotonic() - started

    def indexed(self) -> dict[str, tuple[int, str]]:
        """path -> (id, content hash) of every image row, straight from SQLite."""
        if not self.db.exists():
            return {}
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=60) as conn:
            # One statement, one snapshot: the watcher may commit between two statements.
            found = conn.execute(
                "SELECT images.path, images.id, images.content_hash, "
                "(SELECT count(*) FROM images) FROM images JOIN "
                "embeddings ON embeddings.content_hash = images.content_hash"
            ).fetchall()
            rows = [r[:3] for r in found]
            all_rows = (
                found[0][3] if found else conn.execute("SELECT count(*) FROM images").fetchone()[0]
            )
        assert all_rows == len(rows) == len({r[1] for r in rows}), "a photo indexed twice?"
        return {path: (row_id, digest) for path, row_id, digest in rows}

    def runs(self) -> list[str]:
        return [line for line in self.out if line.startswith("watch: ")]


def photos_on_disk(folder: Path, *, unreadable: frozenset[str] = frozenset()) -> set[str]:
    """The photos under `folder` the indexer takes (not hidden, not unreadable)."""
    return {
        str(p)
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.name not in unreadable
    }


def new_photos(runs: list[str]) -> int:
    """How many new photos the run lines report in all."""
    return sum(int(m.group(1)) for line in runs for m in [re.search(r"\+(\d+) new", line)] if m)


def test_watch_keeps_the_index_matching_the_folder(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_photos(folder, 6)
    make_photos(folder / "inbox", 2, start=50)
    make_photos(folder / "rejects", 2, start=60)
    staging = tmp_path / "camera-card"
    make_photos(staging, 100, start=100)
    w = Watching(folder, env)
    try:
        w.wait_for(lambda: any("watching" in line for line in w.err), "ready")
        assert set(w.indexed()) == photos_on_disk(folder)  # the catch-up run at start

        # A card's 100 photos copied in at once: indexed, in one or two runs, not 100.
        before = len(w.runs())
        shutil.copytree(staging, folder / "card")
        took = w.wait_for(lambda: set(w.indexed()) == photos_on_disk(folder), "the burst")
        w.wait_for(lambda: new_photos(w.runs()[before:]) == 100, "the burst's run line")
        burst = w.runs()[before:]
        assert 1 <= len(burst) <= 2, burst
        assert re.fullmatch(r"watch: \+\d+ new in \d+\.\d s", burst[0]), burst
        print(f"100 copied photos indexed {took:.1f} s after the copy, in {len(burst)} run(s)")

        # Renamed, moved to another folder, deleted, rewritten, added; junk that is ignored.
        ids = w.indexed()
        p = {name: folder / name for name in ("img_0000.jpg", "img_0001.jpg", "img_0003.jpg")}
        (folder / "img_0000.jpg").rename(folder / "beach.jpg")
        (folder / "2024").mkdir()
        (folder / "img_0001.jpg").rename(folder / "2024" / "img_0001.jpg")
        (folder / "card" / "img_0100.jpg").rename(folder / "from-card.jpg")
        for name in ("img_0050.jpg", "img_0051.jpg"):  # the inbox sorted out, left empty
            (folder / "inbox" / name).rename(folder / "2024" / name)
        for gone in (folder / "img_0002.jpg", folder / "card" / "img_0101.jpg"):
            gone.unlink()
        for gone in (folder / "rejects").iterdir():  # deleted, leaving the folder empty
            gone.unlink()
        picture(999).save(p["img_0003.jpg"], "JPEG")
        make_photos(folder / "new", 2, start=500, fmt="PNG")
        (folder / "broken.jpg").write_bytes(b"not a photo at all")
        (folder / "notes.txt").write_text("ignored")
        picture(7).save(folder / ".hidden.jpg", "JPEG")
        expected = photos_on_disk(folder, unreadable=frozenset({"broken.jpg"}))
        w.wait_for(lambda: set(w.indexed()) == expected, "the index matching the folder")
        now = w.indexed()
        moves = {
            "img_0000.jpg": "beach.jpg",
            "img_0001.jpg": "2024/img_0001.jpg",
            "card/img_0100.jpg": "from-card.jpg",
            "inbox/img_0050.jpg": "2024/img_0050.jpg",
            "inbox/img_0051.jpg": "2024/img_0051.jpg",
        }
        for old, new in moves.items():  # moved photos keep their ids (and their vectors)
            assert now[str(folder / new)] == ids[str(folder / old)]
        rewritten = str(p["img_0003.jpg"])
        assert now[rewritten][0] == ids[rewritten][0] and now[rewritten][1] != ids[rewritten][1]
        w.wait_for(lambda: any("broken.jpg" in line for line in w.err), "the failure reported")

        # The folder goes away (an unmounted card): its photos stay; back, it is caught up.
        count = len(now)
        folder.rename(tmp_path / "away")
        w.wait_for(lambda: any("is gone" in line for line in w.err), "the folder missed")
        assert len(w.indexed()) == count
        make_photos(tmp_path / "away", 1, start=900)
        (tmp_path / "away").rename(folder)
        expected = photos_on_disk(folder, unreadable=frozenset({"broken.jpg"}))
        w.wait_for(lambda: set(w.indexed()) == expected, "the folder caught up")
        assert len(expected) == count + 1
        final = w.indexed()
        assert all(final[path] == row for path, row in now.items())  # same ids, not re-added
    finally:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = w.proc.wait(60)
    assert code == 0, w.err
    assert "pixsearch: stopped watching" in w.err
    assert not any("Traceback" in line for line in w.err), w.err


# -- `pixsearch serve --watch`: the server's searcher sees what the watcher indexes ---------------
def test_a_server_that_watches_finds_new_photos_without_a_restart(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With polling (`--poll`, for network shares), the other way to see changes."""
    from fastapi.testclient import TestClient

    from api.cli_watch import Background
    from api.server import create_app
    from api.service import Service
    from indexer.settings import Settings

    folder = tmp_path / "inbox"
    folder.mkdir()
    monkeypatch.setenv("PIXSEARCH_WATCH_POLLING", "true")
    monkeypatch.setenv("PIXSEARCH_WATCH_POLL_INTERVAL", "0.5")
    cfg = Settings()
    service = Service.start(cfg)
    watcher = Background(service, [folder])
    everything = {"text": "a photo", "k": 200, "cutoff": False, "rerank": False}

    def found() -> set[str]:
        res = client.post("/search", json=everything)
        assert res.status_code == 200, res.text
        return {hit["path"] for hit in res.json()["results"]}

    def wait_for(paths: set[str]) -> None:
        started = time.monotonic()
        while found() != paths:
            assert watcher.thread.is_alive(), "the watcher stopped"
            assert time.monotonic() - started < HUNG, f"the server never found {len(paths)}"
            time.sleep(0.05)

    with TestClient(create_app(cfg, service)) as client:
        watcher.start()
        try:
            assert found() == set()
            # The start-up run is over once the watcher says how it watches (an empty page
            # is also what a server shows before that run has even begun).
            started = time.monotonic()
            while not watcher.watcher.modes.get(str(folder)):
                assert time.monotonic() - started < HUNG, "the watcher never started watching"
                time.sleep(0.05)
            assert watcher.watcher.modes == {str(folder): "polling"}
            added = make_photos(folder, 5)
            wait_for({str(p) for p in added})
            added[0].unlink()
            wait_for({str(p) for p in added[1:]})
        finally:
            watcher.stop()
    assert not watcher.thread.is_alive()


def test_folders_that_cannot_be_watched_are_refused_in_one_line(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import run_cli

    missing = run_cli(capsys, "watch", str(tmp_path / "nowhere"))
    assert missing.code == 1
    assert missing.err == f"pixsearch: error: {tmp_path / 'nowhere'}: no such folder\n"
    photo = make_photos(tmp_path, 1)[0]
    a_file = run_cli(capsys, "watch", str(photo))
    assert a_file.code == 1 and "not a folder" in a_file.err and "Traceback" not in a_file.err


def test_without_file_events_a_folder_is_polled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify's limits reached (one watch per folder: a large photo tree can exhaust them):
    the folder is polled instead, and its changes still arrive."""
    import errno

    from watchdog.observers import inotify

    from indexer.watch import _Folder

    class NoMoreWatches(inotify.InotifyObserver):
        def start(self) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr("watchdog.observers.Observer", NoMoreWatches)
    seen: list[str] = []
    folder = _Folder(str(tmp_path), lambda event: seen.append(os.fsdecode(event.src_path)))
    folder.start(polling=False, interval=0.5)
    try:
        assert folder.mode == "polling" and folder.alive()
        make_photos(tmp_path / "new", 1)
        started = time.monotonic()
        while str(tmp_path / "new" / "img_0000.jpg") not in seen:
            assert time.monotonic() - started < HUNG, seen
            time.sleep(0.05)
    finally:
        folder.stop()
    assert not folder.alive()
