"""Crashes lose nothing: an indexing run killed (SIGKILL) again and again, at seeded random
moments from start-up to the last batch, ends with every photo indexed exactly once, a database
and a FAISS index that agree, and no half-written file left in the home."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from indexer.db import SCHEMA_REVISION
from indexer.home import Home
from indexer.settings import Settings
from indexer.vectors import VectorIndex
from tests.helpers import ROOT, make_photos, run_cli, start_index

TOTAL = 48
BATCH = 4
#: Only a safety net against a hung child: no assertion depends on how long anything takes.
HUNG = 180.0


def _db_file(env: dict[str, str]) -> Path:
    return Path(env["PIXSEARCH_HOME"]) / "pixsearch.db"


def _rows(db_file: Path) -> int:
    """Committed image rows, read without ever creating the database file."""
    if not db_file.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db_file}?mode=rw", uri=True, timeout=30) as conn:
            return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def _kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], jitter: float) -> None:
    """SIGKILL the run once `ready()` holds (or it ended by itself), `jitter` seconds later."""
    deadline = time.monotonic() + HUNG
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(jitter)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _kill_plan(rng: random.Random, db_file: Path) -> list[tuple[str, Callable[[], bool], float]]:
    """(moment, condition, jitter) for each kill, drawn from the seeded RNG."""
    mid = rng.randint(TOTAL // 3, 2 * TOTAL // 3)
    near_end = TOTAL - rng.randint(1, BATCH)
    return [
        # Python is still importing torch: nothing has been written yet.
        ("start-up", lambda: True, rng.uniform(0.05, 0.8)),
        # The database file just appeared: migrations, the model row, the first batch.
        ("first write", db_file.exists, rng.uniform(0.0, 0.05)),
        ("mid-run", lambda: _rows(db_file) >= mid, rng.uniform(0.0, 0.1)),
        # A re-run killed while starting again, over a half-indexed home.
        ("start-up of a re-run", lambda: True, rng.uniform(0.05, 1.5)),
        # The last batches, the prune, the final save of the index.
        ("near the end", lambda: _rows(db_file) >= near_end, rng.uniform(0.0, 0.02)),
    ]


def _fresh_vectors(folder: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    """path -> embedding from an uninterrupted run into a separate home (in-process)."""
    from indexer.encoder import get_encoder
    from indexer.pipeline import Indexer

    settings = Settings(home=tmp_path / "reference")
    home = Home(settings)
    Indexer(home, get_encoder(settings)).run([str(folder)])
    return _stored_by_path(home)


def _stored_by_path(home: Home) -> dict[str, np.ndarray]:
    (model,) = _models(home)
    ids, vecs = home.stored_vectors(model.id, model.dim)
    rows = home.images_by_id([int(i) for i in ids])
    return {rows[int(i)].path: vec for i, vec in zip(ids, vecs, strict=True)}


def _models(home: Home) -> list:
    from sqlalchemy import select

    from indexer.db import Model

    with home.session() as s:
        return list(s.scalars(select(Model)))


def test_repeated_sigkill_then_resume_loses_nothing(
    env: dict[str, str], tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "photos"
    files = make_photos(folder, TOTAL, size=(480, 360))
    db_file = _db_file(env)
    rng = random.Random(20240611)
    moments = []
    for label, ready, jitter in _kill_plan(rng, db_file):
        proc = start_index(folder, env, batch=BATCH, quiet=True)
        _kill_when(proc, ready, jitter)
        moments.append((label, proc.returncode, _rows(db_file)))
    kills = f"kills (moment, exit status, rows committed): {moments}"
    assert all(code in (-signal.SIGKILL, 0) for _, code, _ in moments), kills
    committed = _rows(db_file)

    # The next run finishes the job, re-doing nothing that was committed.
    summary = run_cli(capsys, "index", str(folder), "--json").json()
    assert summary["failed"] == [], kills
    assert summary["added"] == TOTAL - committed, (summary, kills)
    assert summary["unchanged"] == committed and summary["updated"] == 0, (summary, kills)

    # Every photo exactly once, in a database SQLite finds intact.
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], kills
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], kills
        paths = [r[0] for r in conn.execute("SELECT path FROM images")]
        db_ids = sorted(r[0] for r in conn.execute("SELECT id FROM images"))
        embeddings = conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM images WHERE content_hash NOT IN "
            "(SELECT content_hash FROM embeddings)"
        ).fetchone()[0]
    assert sorted(paths) == sorted(str(p) for p in files), kills
    assert embeddings == TOTAL and orphans == 0, kills

    # Each photo's stored vector is its own: the same as an uninterrupted run gives.
    home = Home(Settings())
    stored = _stored_by_path(home)
    fresh = _fresh_vectors(folder, tmp_path)
    assert stored.keys() == fresh.keys()
    worst = min(float(stored[p] @ fresh[p]) for p in stored)
    assert worst > 0.999, worst

    # The saved FAISS index is a whole file: the last run's, or (when the kills left nothing for
    # the last run to write) an earlier one, which the next command rebuilds as designed.
    (model,) = _models(home)
    path = home.index_path(model.name)
    generation, count = home.generation(model.id), home.count_vectors(model.id)
    _, why = VectorIndex.open(path, model.dim, generation, count)
    assert why == "ok" or why.startswith("stale"), (why, kills)
    assert count == embeddings
    assert len(home.load_index(model.name, model.id, model.dim)) == embeddings
    index, why = VectorIndex.open(path, model.dim, generation, count)
    assert index is not None and len(index) == TOTAL, why

    info = run_cli(capsys, "status", "--json").json()
    assert info["images"] == TOTAL and info["indexed_with_model"] == TOTAL
    hits = run_cli(capsys, "search", "--no-cutoff", "x", "-k", str(TOTAL + 10), "--json").json()
    assert sorted(h["id"] for h in hits) == db_ids

    # No temporary or half-written file is left behind.
    leftovers = [p.name for p in Path(env["PIXSEARCH_HOME"]).rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    names = {p.name for p in Path(env["PIXSEARCH_HOME"]).iterdir()}
    expected = {"pixsearch.db", "pixsearch.db-wal", "pixsearch.db-shm", "index.lock", path.name}
    expected.add("precision.json")  # the model's calibrated precision on this CPU
    assert names <= expected, names - expected


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_save_killed_midway_leaves_no_temporary_file(env, photos: Path, capsys) -> None:
    """What a kill during the index's atomic save leaves (a partial temporary file of a dead
    process) is removed by the next run; a live process's temporary file is left alone."""
    run_cli(capsys, "index", str(photos))
    home = Home(Settings())
    (model,) = _models(home)
    path = home.index_path(model.name)
    dead = path.with_name(f".{path.name}.{_dead_pid()}.tmp")
    dead.write_bytes(path.read_bytes()[:100])
    thumbs = home.path / "thumbnails" / "ab"
    thumbs.mkdir(parents=True)
    dead_thumb = thumbs / f".ab12.jpg.{_dead_pid()}.140234.tmp"
    dead_thumb.write_bytes(b"\xff\xd8")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = path.with_name(f".{path.name}.{sleeper.pid}.tmp")
        live.write_bytes(b"in progress")
        assert run_cli(capsys, "index", str(photos)).code == 0
        assert not dead.exists() and not dead_thumb.exists()
        assert live.exists()  # another process may be writing it right now
    finally:
        sleeper.kill()
        sleeper.wait()
    hits = run_cli(capsys, "search", "--no-cutoff", "x", "-k", "20", "--json").json()
    assert len(hits) == 12


def test_a_crash_during_the_first_migration_leaves_a_usable_home(tmp_path: Path) -> None:
    """A process dying halfway through creating the schema must not leave half a schema that
    every later run refuses to open ("table images already exists")."""
    url = f"sqlite:///{tmp_path / 'home' / 'pixsearch.db'}"
    (tmp_path / "home").mkdir()
    script = f"""
import os
from alembic.operations import Operations
create = Operations.create_table
made = []
def dying_create_table(self, *args, **kwargs):
    if len(made) == 2:
        os._exit(9)  # as abrupt as SIGKILL: no rollback, no cleanup
    made.append(args[0])
    return create(self, *args, **kwargs)
Operations.create_table = dying_create_table
from indexer import db
db.upgrade(db.make_engine({url!r}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    home = Home(Settings(home=tmp_path / "home"))
    assert home.image_count() == 0
    assert home.libraries() == []
    with sqlite3.connect(tmp_path / "home" / "pixsearch.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        assert version == [(SCHEMA_REVISION,)]
