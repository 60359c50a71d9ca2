"""Re-running the indexer: unchanged files are skipped, changes, moves and deletions followed.

Tests taking the `database` fixture run on SQLite and on PostgreSQL (tests/conftest.py).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from indexer.db import Embedding, Image
from indexer.home import Home
from indexer.settings import Settings
from tests.helpers import make_photos, picture, run_cli


def _rows(settings: Settings | None = None) -> dict[str, int]:
    home = Home(settings or Settings())
    with home.session() as s:
        return {r.path: r.id for r in s.scalars(select(Image))}


def _index(capsys, *paths: Path | str) -> dict:
    res = run_cli(capsys, "index", *(str(p) for p in paths), "--json")
    assert res.code == 0, res.err
    return res.json()  # type: ignore[return-value]


def _faiss_ids() -> set[int]:
    home = Home(Settings())
    model = home.model_row(next(iter(_models())))
    assert model is not None
    index = home.load_index(model.name, model.id, model.dim)
    ids, _ = home.stored_vectors(model.id, model.dim)
    assert len(index) == len(ids)
    return {int(i) for i in ids}


def _models() -> list[str]:
    from indexer.db import Model

    with Home(Settings()).session() as s:
        return list(s.scalars(select(Model.name)))


def test_unchanged_files_are_not_read_again(env, photos: Path, capsys) -> None:
    _index(capsys, photos)
    # Same size and mtime but garbage inside: a run that read it would fail on it.
    victim = photos / "img_0002.jpg"
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = _index(capsys, photos)
    assert (second["unchanged"], second["added"], second["failed"]) == (12, 0, [])


def test_changed_file_is_re_embedded(env, database, photos: Path, capsys) -> None:
    _index(capsys, photos)
    before = _rows()
    target = photos / "img_0004.jpg"
    picture(999).save(target, "JPEG")
    summary = _index(capsys, photos)
    assert (summary["updated"], summary["unchanged"], summary["added"]) == (1, 11, 0)
    assert _rows() == before  # same ids
    hits = run_cli(capsys, "similar", "--no-cutoff", str(target), "-k", "1", "--json").json()
    assert hits[0]["path"] == str(target) and hits[0]["score"] > 0.999
    # The old content's embedding is gone with it.
    with Home(Settings()).session() as s:
        assert s.scalar(select(func.count()).select_from(Embedding)) == 12


def test_deleted_file_leaves_database_and_index(env, database, photos: Path, capsys) -> None:
    _index(capsys, photos)
    gone = photos / "img_0007.jpg"
    gone_id = _rows()[str(gone)]
    gone.unlink()
    summary = _index(capsys, photos)
    assert (summary["removed"], summary["unchanged"]) == (1, 11)
    assert str(gone) not in _rows()
    assert gone_id not in _faiss_ids()
    hits = run_cli(capsys, "search", "--no-cutoff", "x", "-k", "50", "--json").json()
    assert len(hits) == 11 and str(gone) not in {h["path"] for h in hits}


def test_moved_file_keeps_its_id_and_embedding(env, database, photos: Path, capsys) -> None:
    _index(capsys, photos)
    old = photos / "img_0001.jpg"
    old_id = _rows()[str(old)]
    (photos / "sub").mkdir()
    new = photos / "sub" / "renamed.jpg"
    shutil.move(old, new)
    summary = _index(capsys, photos)
    assert (summary["moved"], summary["added"], summary["removed"]) == (1, 0, 0)
    rows = _rows()
    assert rows[str(new)] == old_id and str(old) not in rows
    assert old_id in _faiss_ids()


def test_photos_moved_out_of_a_folder_they_empty_keep_their_ids(
    env, database, photos: Path, capsys, caplog
) -> None:
    """An inbox sorted into dated folders: the empty inbox looks like an unmounted drive, so
    its rows are kept, but the same photos found elsewhere are their moves, not twins."""
    inbox, dated = photos / "inbox", photos / "2024"
    make_photos(inbox, 3, start=50)
    _index(capsys, photos)
    ids = {p.name: _rows()[str(p)] for p in inbox.iterdir()}
    dated.mkdir()
    for p in list(inbox.iterdir()):
        shutil.move(p, dated / p.name)
    with caplog.at_level(logging.WARNING):
        summary = _index(capsys, photos)
    assert (summary["moved"], summary["added"], summary["removed"]) == (3, 0, 0)
    assert not [r.getMessage() for r in caplog.records if "keeping them" in r.getMessage()]
    rows = _rows()
    assert len(rows) == 15 and {name: rows[str(dated / name)] for name in ids} == ids


def test_identical_files_are_embedded_once(env, database, photos: Path, capsys) -> None:
    for i in range(3):
        shutil.copy(photos / "img_0000.jpg", photos / f"copy_{i}.jpg")
    summary = _index(capsys, photos)
    assert summary["added"] == 15
    with Home(Settings()).session() as s:
        assert s.scalar(select(func.count()).select_from(Embedding)) == 12
        assert s.scalar(select(func.count()).select_from(Image)) == 15
    hits = run_cli(
        capsys, "similar", "--no-cutoff", str(photos / "img_0000.jpg"), "-k", "4", "--json"
    ).json()
    assert {h["score"] for h in hits} == {hits[0]["score"]}  # the four copies tie


def test_pruning_is_limited_to_the_folders_indexed(
    env, tmp_path: Path, photos: Path, capsys
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    picture(500).save(other / "x.jpg")
    _index(capsys, photos)
    _index(capsys, other)
    assert len(_rows()) == 13  # indexing `other` did not remove the photos


def test_missing_or_emptied_root_never_deletes(env, photos: Path, capsys) -> None:
    _index(capsys, photos)
    hidden_away = photos.with_name("unmounted")
    photos.rename(hidden_away)
    summary = _index(capsys, photos)
    assert summary["removed"] == 0 and summary["failed"][0]["path"] == str(photos)
    assert "no such file" in summary["failed"][0]["error"]
    photos.mkdir()  # an empty mount point
    assert _index(capsys, photos)["removed"] == 0
    assert len(_rows()) == 12


def test_hidden_folders_are_skipped_unless_asked(env, photos: Path, capsys) -> None:
    hidden = photos / ".thumbnails"
    hidden.mkdir()
    picture(77).save(hidden / "t.jpg")
    picture(78).save(photos / ".hidden.jpg")
    assert _index(capsys, photos)["scanned"] == 12
    res = run_cli(capsys, "index", "--hidden", str(photos), "--json")
    assert res.json()["added"] == 2


def test_symlink_loop_does_not_hang(env, photos: Path, capsys) -> None:
    (photos / "loop").symlink_to(photos, target_is_directory=True)
    (photos / "sub").mkdir()
    (photos / "sub" / "back").symlink_to(photos.parent, target_is_directory=True)
    summary = _index(capsys, photos)
    assert summary["added"] == 12 and summary["failed"] == []


def test_new_model_re_embeds_everything(
    env, photos: Path, tiny_model, tmp_path: Path, capsys
) -> None:
    import torch

    _index(capsys, photos)
    state = torch.load(tiny_model[1])
    other = tmp_path / "tiny-v2.pt"
    torch.save({k: v * 1.01 for k, v in state.items()}, other)
    res = run_cli(capsys, "--pretrained", str(other), "index", str(photos), "--json")
    assert res.json()["updated"] == 12
    assert len(_models()) == 2
    ids = np.array(sorted(_rows().values()))
    assert len(ids) == 12
