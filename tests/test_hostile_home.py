"""Hostile homes: read-only media, full disks, damaged or misplaced databases (issue 15)."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.server import create_app
from tests.helpers import run_cli, run_subprocess, start_serve, unprivileged


def _chmod_tree(top: Path, dirs: int, files: int) -> None:
    for folder, _, names in os.walk(top):
        os.chmod(folder, dirs)
        for name in names:
            os.chmod(os.path.join(folder, name), files)


def _ids(out: str) -> list[int]:
    return [hit["id"] for hit in json.loads(out)]


def test_a_read_only_home_is_searched_and_refuses_indexing(
    env: dict[str, str], photos: Path
) -> None:
    assert run_subprocess("index", str(photos), env=env).code == 0
    expected = run_subprocess("search", "--no-cutoff", "a photo", "-k", "5", "--json", env=env)
    home = Path(env["PIXSEARCH_HOME"])
    before = sorted(p.name for p in home.iterdir())
    _chmod_tree(home, 0o555, 0o444)
    try:
        got = run_subprocess(
            "search", "--no-cutoff", "a photo", "-k", "5", "--json", env=env, bound=True
        )
        assert got.code == 0, got.err
        assert _ids(got.out) == _ids(expected.out)
        status = run_subprocess("status", "--json", env=env, bound=True)
        assert status.code == 0, status.err
        assert json.loads(status.out)["images"] == 12
        indexing = run_subprocess("index", str(photos), env=env, bound=True)
        assert indexing.code == 1
        assert indexing.err.strip().splitlines() == [
            f"pixsearch: error: the data folder {home} is read-only "
            "(searching works, indexing does not)"
        ]
        proc, url = start_serve(env, bound=True)
        try:
            query = {"text": "a photo", "k": 5, "cutoff": False}
            answer = httpx.post(f"{url}/search", json=query, timeout=60)
            assert answer.status_code == 200, answer.text
            assert [h["id"] for h in answer.json()["results"]] == _ids(expected.out)
        finally:
            proc.terminate()
            proc.wait(30)
        assert sorted(p.name for p in home.iterdir()) == before  # nothing written there
    finally:
        _chmod_tree(home, 0o755, 0o644)


def test_the_permission_helper_really_binds(tmp_path: Path) -> None:
    """The helper the read-only tests rely on: a chmod 000 file is unreadable to the child."""
    import subprocess
    import sys

    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0)
    proc = subprocess.run(
        [sys.executable, "-c", f"open({str(secret)!r}).read()"],
        capture_output=True,
        **unprivileged(),
    )
    assert proc.returncode != 0 and b"PermissionError" in proc.stderr


@pytest.mark.parametrize("what", ["folder", "dangling link"])
def test_a_database_that_is_no_file_is_said_so(env, photos: Path, capsys, what: str) -> None:
    home = Path(env["PIXSEARCH_HOME"])
    home.mkdir()
    db = home / "pixsearch.db"
    if what == "folder":
        db.mkdir()
    else:
        db.symlink_to(home / "gone.db")
    for args in (("search", "--no-cutoff", "a cat"), ("status",), ("index", str(photos))):
        result = run_cli(capsys, *args)
        assert result.code == 1, args
        assert result.err.startswith(f"pixsearch: error: the database {db} is "), result.err
        assert "nothing is indexed" not in result.err
        assert len(result.err.strip().splitlines()) == 1


def _damage(db: Path) -> None:
    """Overwrite every page after the first of a database with garbage."""
    size = db.stat().st_size
    with open(db, "r+b") as fh:
        fh.seek(4096)
        fh.write(os.urandom(size - 4096))


def test_a_damaged_database_is_one_line_without_sql(env, photos: Path) -> None:
    # In a subprocess: it ends with a clean close, everything in the file itself (no WAL).
    assert run_subprocess("index", str(photos), env=env).code == 0
    db = Path(env["PIXSEARCH_HOME"]) / "pixsearch.db"
    _damage(db)
    for args in (("search", "--no-cutoff", "a cat"), ("status",), ("index", str(photos))):
        result = run_subprocess(*args, env=env)
        assert result.code == 1, (args, result.err)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and f"the database {db} is damaged" in lines[0], result.err
        assert "SELECT" not in result.err and "parameters" not in result.err.lower()


def test_a_database_damaged_under_a_running_server_answers_503(env, photos: Path, capsys) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    db = Path(env["PIXSEARCH_HOME"]) / "pixsearch.db"
    with TestClient(create_app()) as client:
        assert client.post("/search", json={"text": "a cat"}).status_code == 200
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        _damage(db)
        answer = client.post("/search", json={"text": "another cat", "k": 7})
        assert answer.status_code == 503, answer.text
        detail = answer.json()["detail"]
        assert "damaged" in detail and "SELECT" not in detail


def test_a_full_disk_during_indexing_is_said_so(
    env, photos: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from any write (here the FAISS index's save) is one line naming the disk."""
    from indexer import vectors

    home = Path(env["PIXSEARCH_HOME"])

    def full(self: object, path: Path, generation: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(vectors.VectorIndex, "save", full)
    result = run_cli(capsys, "index", str(photos))
    assert result.code == 1
    assert result.err.strip().splitlines() == [
        f"pixsearch: error: the disk holding {home} is full; free some space and run it again"
    ]


def test_sqlite_full_disk_is_said_so(env, photos: Path, capsys) -> None:
    """SQLite's own "database or disk is full" (a page limit stands in for the disk)."""
    from indexer.errors import HomeError
    from indexer.home import Home
    from indexer.settings import Settings

    assert run_cli(capsys, "index", str(photos)).code == 0
    home = Home(Settings())

    from sqlalchemy import event

    @event.listens_for(home.engine, "connect")
    def tiny(dbapi_conn: object, _record: object) -> None:
        dbapi_conn.execute("PRAGMA max_page_count=1")  # type: ignore[attr-defined]

    home.engine.dispose()
    with pytest.raises(HomeError, match=r"^the disk holding .* is full"):
        home.add_libraries([f"/somewhere/{i}/" + "x" * 500 for i in range(200)])


@pytest.mark.parametrize("arg", ["99999999999999999999999", "-1", "0"])
def test_similar_to_an_impossible_id_says_no_such_image(env, photos: Path, capsys, arg) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    result = run_cli(capsys, "similar", "--no-cutoff", "--", arg)
    assert result.code == 1
    assert result.err.strip() == f"pixsearch: error: no indexed image has id {int(arg)}"


def test_a_really_full_disk_during_indexing_is_said_so(env, tmp_path: Path, capsys) -> None:
    """The home on a small tmpfs, filled up before a second run (needs `mount`)."""
    import subprocess

    from tests.helpers import make_photos

    home = Path(env["PIXSEARCH_HOME"])
    home.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(home)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        make_photos(tmp_path / "photos", 12)
        assert run_subprocess("index", str(tmp_path / "photos"), env=env).code == 0
        fd = os.open(home / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, bytes(4096))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        make_photos(tmp_path / "photos", 200, start=100)
        result = run_subprocess("index", str(tmp_path / "photos"), env=env)
        assert result.code == 1, result.err
        assert result.err.strip().splitlines() == [
            f"pixsearch: error: the disk holding {home} is full; free some space and run it again"
        ]
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


def test_any_database_error_under_the_server_is_a_one_line_503(
    env, photos: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the core does not translate is still the database's fault, not a 500."""
    from sqlalchemy.exc import OperationalError

    from indexer.home import Home

    assert run_cli(capsys, "index", str(photos)).code == 0

    def broken(self: Home, ids: list[int]) -> None:
        raise OperationalError("SELECT secret FROM images", {"id": 1}, Exception("no luck"))

    with TestClient(create_app()) as client:
        monkeypatch.setattr(Home, "images_by_id", broken)
        answer = client.get("/images/1")
    assert answer.status_code == 503
    assert answer.json() == {"detail": "the database cannot be used: no luck"}
