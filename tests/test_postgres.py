"""PostgreSQL as the database: the same answers as SQLite, concurrent indexing runs over
separate folders, the per-folder lock, a kill mid-run, and a database that cannot be used.

A real server (tests/pg.py) started once for the run; each test gets a fresh database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from indexer import db
from indexer.db import Caption, Embedding, Image
from indexer.home import Home
from indexer.settings import Settings
from tests.helpers import make_photos, run_cli, start_index


def _count(home: Home, table: type) -> int:
    with home.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def _ids(home: Home) -> list[int]:
    with home.engine.connect() as conn:
        return list(conn.scalars(select(Image.id)))


def test_models_and_migrations_agree_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    home = Home(Settings(home=tmp_path / "home", database_url=pg_url))
    with home.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": db.modelled})
        assert compare_metadata(ctx, db.Base.metadata) == []
    # Nothing of the database lives in the home folder: not even the folder, yet.
    assert not (tmp_path / "home").exists()


def test_keyword_lookup_and_paths_agree_with_sqlite(pg_server, tmp_path: Path) -> None:
    """Stored captions found by the same words on both databases; any file name stored and
    given back as it was (PostgreSQL's text holds no NUL, SQLite's escape for bad bytes)."""
    from indexer.captioners.base import CaptionStore

    class Named:
        name = "test-captioner"
        clip_model = None

    captions = {
        "a" * 32: "a red bicycle against a wall",
        "b" * 32: "two red apples on a table",
        "c" * 32: "a dog on a bicycle",
        "d" * 32: "Bicycles, bicycles everywhere",
    }
    odd = os.fsdecode(b"/photos/caf\xe9-\x01-\xff.jpg")  # not UTF-8, and a U+0001
    found = {}
    for kind, url in [("sqlite", None), ("postgresql", pg_server.database())]:
        home = Home(Settings(home=tmp_path / kind, database_url=url))
        store = CaptionStore(home, Named(), "clip")  # type: ignore[arg-type]
        with home.session() as s, s.begin():
            for digest, words in captions.items():
                s.add(Caption(content_hash=digest, captioner=store.key, text=words,
                              created_at=home.now()))  # fmt: skip
        home.add_libraries([odd, "/photos"])
        assert sorted(home.libraries()) == sorted([odd, "/photos"])
        found[kind] = {
            q: sorted(store.keyword_hits(q)) for q in ("bicycle", "red apples", "table dog", "cat")
        }
    assert found["sqlite"] == found["postgresql"]
    assert found["sqlite"]["bicycle"] == ["a" * 32, "c" * 32]
    assert found["sqlite"]["cat"] == []


def _exported(capsys, out: Path) -> dict[str, list]:
    import numpy as np

    assert run_cli(capsys, "export", "--out", str(out)).code == 0
    with np.load(out) as data:
        return {"paths": data["paths"].tolist(), "vectors": data["embeddings"].round(6).tolist()}


def test_search_answers_as_on_sqlite(
    env, pg_server, photos: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # Three larger photos in a folder of their own; filters too broad for the ids a search
    # reads (a limit of one id) are counted, their share estimated and the candidates tested
    # in SQL on both databases.
    make_photos(photos / "trip", 3, start=12, size=(200, 150))
    monkeypatch.setenv("PIXSEARCH_FILTER_IDS_LIMIT", "1")
    run_cli(capsys, "index", str(photos))
    queries = [
        ("search", "--no-cutoff", "a red square", "-k", "5"),
        ("similar", "--no-cutoff", str(photos / "img_0003.jpg")),
        ("search", "--no-cutoff", "a red square", "--folder", str(photos / "trip")),
        ("search", "--no-cutoff", "a red square", "--min-width", "180", "-k", "2"),
    ]
    on_sqlite = [run_cli(capsys, *q, "--json").json() for q in queries]
    exported = _exported(capsys, tmp_path / "sqlite.npz")
    monkeypatch.setenv("PIXSEARCH_HOME", env["PIXSEARCH_HOME"] + "-pg")
    monkeypatch.setenv("PIXSEARCH_DATABASE_URL", pg_server.database())
    summary = run_cli(capsys, "index", str(photos), "--json").json()
    assert summary["added"] == 15 and summary["failed"] == []
    on_postgres = [run_cli(capsys, *q, "--json").json() for q in queries]
    assert on_postgres == on_sqlite
    trip = [Path(h["path"]).parent.name for h in on_sqlite[2]]
    assert trip == ["trip"] * 3, on_sqlite[2]
    assert [Path(h["path"]).parent.name for h in on_sqlite[3]] == ["trip"] * 2
    status = run_cli(capsys, "status", "--json").json()
    assert status["images"] == 15 and status["indexed_with_model"] == 15
    assert status["database_bytes"] > 0
    assert _exported(capsys, tmp_path / "pg.npz") == exported


def _wait_all(procs: list[subprocess.Popen[str]], timeout: float = 300) -> list[str]:
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-2000:]
        outs.append(out)
    return outs


def _under(home: Home, folder: Path) -> int:
    prefix = str(folder) + os.sep
    with home.engine.connect() as conn:
        stmt = select(func.count()).select_from(Image).where(Image.path.startswith(prefix))
        return int(conn.scalar(stmt) or 0)


def test_two_indexing_runs_write_one_database_at_once(
    env, pg_url: str, tmp_path: Path, capsys
) -> None:
    """Two processes (two machines, as far as the database can tell) over separate folders
    write at once; one is killed midway and resumed: both libraries land completely, and the
    index file left behind is rebuilt from the database where it is stale."""
    import json

    a = make_photos(tmp_path / "lib" / "a", 8, start=0)[0].parent
    b = make_photos(tmp_path / "lib" / "b", 16, start=100, size=(320, 240))[0].parent
    # Content in both libraries: both runs may store its embedding at the same moment.
    (b / "twin.jpg").write_bytes((a / "img_0000.jpg").read_bytes())
    run_a, run_b = (start_index(folder, env, batch=2) for folder in (a, b))
    home = Home(Settings())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run_b.poll() is None:
        try:
            if _under(home, b) >= 2:  # its first batch: killed well before its ninth
                break
        except Exception:  # the schema is not there yet
            pass
        time.sleep(0.005)
    run_b.send_signal(signal.SIGKILL)
    run_b.communicate()
    (out,) = _wait_all([run_a])
    summary_a = json.loads(out)
    assert (summary_a["added"], summary_a["failed"]) == (8, [])
    committed = _under(home, b)
    assert 0 < committed < 17, committed
    summary_b = run_cli(capsys, "index", str(b), "--json").json()
    assert summary_b["failed"] == []
    assert (summary_b["added"], summary_b["unchanged"]) == (17 - committed, committed)

    assert _count(home, Image) == 25 and _count(home, Embedding) == 24
    assert sorted(home.libraries()) == sorted([str(a), str(b)])
    hits = run_cli(capsys, "search", "--no-cutoff", "x", "-k", "50", "--json").json()
    # Every photo is found; the twin's copy collapses into its original as a duplicate.
    assert len(hits) == 24 and {h["id"] for h in hits} <= set(_ids(home))
    again = run_cli(capsys, "index", str(tmp_path / "lib"), "--json").json()
    assert (again["added"], again["unchanged"], again["removed"]) == (0, 25, 0)


def test_the_same_folder_twice_is_refused_in_one_line(env, pg_url: str, photos: Path, capsys):
    from indexer.housekeeping import home_lock

    home = Home(Settings())
    sub = photos / "sub"
    make_photos(sub, 2, start=40)
    with home_lock(home, [str(photos)]):  # what a running `pixsearch index PHOTOS` holds
        for folder, named in [(photos, photos), (sub, photos), (photos.parent, photos.parent)]:
            res = run_cli(capsys, "index", str(folder))
            assert res.code == 1
            lines = res.err.strip().splitlines()
            assert len(lines) == 1 and "another indexing run is indexing" in lines[0], lines
            assert str(named) in lines[0] and "wait for it to end" in lines[0]
        assert _count(home, Image) == 0
        # Another folder of the same database is free.
        other = make_photos(photos.parent / "other", 3, start=60)[0].parent
        assert run_cli(capsys, "index", str(other)).code == 0
    assert run_cli(capsys, "index", str(photos)).code == 0
    assert _count(home, Image) == 17


@pytest.mark.parametrize(
    ("make_url", "reason"),
    [
        (
            lambda s: f"postgresql+psycopg://postgres:pw@127.0.0.1:{s.port}/nosuchdb",
            "does not exist",
        ),
        (lambda s: "postgresql+psycopg://postgres:pw@127.0.0.1:1/pixsearch", "refused"),
        (lambda s: "postgresql+psycopg://postgres:pw@nosuchhost.invalid/pixsearch", "nosuchhost"),
        (lambda s: "postgres-ish://nothing", "not a database URL"),
        (lambda s: "mysql://root:pw@127.0.0.1/x", "SQLite or PostgreSQL, not mysql"),
    ],
    ids=["missing-database", "nothing-listening", "unknown-host", "not-a-url", "mysql"],
)
def test_a_database_that_cannot_be_used_is_one_line(
    env, pg_server, photos: Path, capsys, monkeypatch, make_url, reason: str
) -> None:
    monkeypatch.setenv("PIXSEARCH_DATABASE_URL", make_url(pg_server))
    for args in [("index", str(photos)), ("search", "--no-cutoff", "x"), ("status",)]:
        res = run_cli(capsys, *args)
        assert res.code != 0, args
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pixsearch: error: "), (args, lines)
        assert reason in lines[0], lines
        assert ":pw@" not in lines[0]  # never the password
    assert not Path(env["PIXSEARCH_HOME"]).exists()  # nothing written


def test_serve_reads_a_postgresql_home(env, pg_url: str, photos: Path, capsys) -> None:
    from fastapi.testclient import TestClient

    from api.server import create_app

    run_cli(capsys, "index", str(photos))
    with TestClient(create_app()) as client:
        res = client.post("/search", json={"text": "a blue square", "k": 3, "cutoff": False})
        assert res.status_code == 200, res.text
        assert len(res.json()["results"]) == 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
