"""Folders that cannot be listed, are emptied, deleted, or briefly replaced (issue 15)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from api.server import create_app
from tests.helpers import make_photos, run_cli, run_subprocess


def _library(tmp_path: Path) -> tuple[Path, Path]:
    lib = tmp_path / "lib"
    make_photos(lib, 5)
    make_photos(lib / "drive", 15, start=100)
    return lib, lib / "drive"


def _ids(capsys) -> dict[str, int]:
    from sqlalchemy import select

    from indexer.db import Image
    from indexer.home import Home
    from indexer.settings import Settings

    home = Home(Settings())
    with home.session() as s:
        return {path: id_ for path, id_ in s.execute(select(Image.path, Image.id))}


def test_a_folder_that_cannot_be_listed_keeps_its_photos(env, tmp_path: Path, capsys) -> None:
    lib, drive = _library(tmp_path)
    assert run_cli(capsys, "index", str(lib)).code == 0
    before = _ids(capsys)
    assert len(before) == 20
    drive.chmod(0)
    try:
        result = run_subprocess("index", str(lib), "--json", env=env, bound=True)
    finally:
        drive.chmod(0o755)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["removed"] == 0
    assert [f["path"] for f in report["failed"]] == [str(drive)]
    assert "cannot list folder" in report["failed"][0]["error"]
    # Readable again: nothing to do, every photo under the id it had.
    again = run_cli(capsys, "index", str(lib), "--json").json()
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, 20)
    assert _ids(capsys) == before


def test_a_file_that_cannot_be_looked_at_keeps_its_row(env, tmp_path: Path, capsys) -> None:
    """A folder that lists but cannot be entered (r--): its files cannot be stat'ed."""
    lib, drive = _library(tmp_path)
    assert run_cli(capsys, "index", str(lib)).code == 0
    before = _ids(capsys)
    drive.chmod(0o444)
    try:
        result = run_subprocess("index", str(lib), "--json", env=env, bound=True)
    finally:
        drive.chmod(0o755)
    assert result.code == 0, result.err
    assert json.loads(result.out)["removed"] == 0
    assert _ids(capsys) == before


def test_an_emptied_folder_keeps_its_photos_with_a_warning(
    env, tmp_path: Path, capsys, caplog
) -> None:
    """An unmounted drive's mount point: the folder is there, and lists nothing."""
    lib, drive = _library(tmp_path)
    assert run_cli(capsys, "index", str(lib)).code == 0
    before = _ids(capsys)
    away = tmp_path / "away"
    shutil.move(drive, away)
    drive.mkdir()
    with caplog.at_level(logging.WARNING):
        result = run_cli(capsys, "index", str(lib), "--json")
    assert result.json()["removed"] == 0
    said = f"{drive} is empty now, but 15 images were indexed there"
    assert any(said in r.getMessage() for r in caplog.records)
    drive.rmdir()
    shutil.move(away, drive)
    again = run_cli(capsys, "index", str(lib), "--json").json()
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, 20)
    assert _ids(capsys) == before


def test_a_deleted_folder_removes_its_photos(env, tmp_path: Path, capsys) -> None:
    lib, drive = _library(tmp_path)
    assert run_cli(capsys, "index", str(lib)).code == 0
    shutil.rmtree(drive)
    result = run_cli(capsys, "index", str(lib), "--json").json()
    assert result["removed"] == 15
    assert sorted(_ids(capsys)) == sorted(str(p) for p in lib.glob("*.jpg"))


def test_a_folder_briefly_replaced_by_a_file_leaves_no_phantom(env, tmp_path: Path, capsys) -> None:
    lib, drive = _library(tmp_path)
    assert run_cli(capsys, "index", str(drive)).code == 0
    # The folder becomes a photo for one run: the rows inside it are gone, it is one now.
    shutil.move(drive, tmp_path / "away")
    shutil.copy(lib / "img_0000.jpg", drive)
    result = run_cli(capsys, "index", str(drive), "--json").json()
    assert (result["added"], result["removed"]) == (1, 15)
    assert list(_ids(capsys)) == [str(drive)]
    phantom = _ids(capsys)[str(drive)]
    # The folder is back: the row of the file it was is pruned.
    drive.unlink()
    shutil.move(tmp_path / "away", drive)
    result = run_cli(capsys, "index", str(drive), "--json").json()
    assert result["removed"] == 1
    assert str(drive) not in _ids(capsys)
    with TestClient(create_app()) as client:
        assert client.get(f"/images/{phantom}").status_code == 404
        hits = client.post("/search", json={"text": "a photo", "k": 50, "cutoff": False})
        assert phantom not in [h["id"] for h in hits.json()["results"]]


def test_a_file_gone_or_turned_folder_is_404_not_500(env, photos: Path, capsys) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    ids = _ids(capsys)
    gone, folder = str(photos / "img_0001.jpg"), str(photos / "img_0002.jpg")
    Path(gone).unlink()
    Path(folder).unlink()
    Path(folder).mkdir()
    with TestClient(create_app()) as client:
        for path in (gone, folder):
            for suffix in ("", "/thumbnail"):
                answer = client.get(f"/images/{ids[path]}{suffix}")
                assert answer.status_code == 404, (path, suffix, answer.text)
