"""Embeddings that no image row uses (what a kill can leave) never keep a file out of the index,
and the end-of-run clean-up either happens whole or not at all."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from indexer.encoder import get_encoder
from indexer.home import Home
from indexer.pipeline import Indexer
from indexer.settings import Settings
from tests.helpers import picture, run_cli


def _db(env: dict[str, str]) -> sqlite3.Connection:
    return sqlite3.connect(Path(env["PIXSEARCH_HOME"]) / "pixsearch.db")


def _counts(env: dict[str, str]) -> tuple[int, int, int]:
    """(image rows, embeddings, embeddings no row uses)."""
    with _db(env) as conn:
        images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        embeddings = conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        unused = conn.execute(
            "SELECT count(*) FROM embeddings WHERE content_hash NOT IN "
            "(SELECT content_hash FROM images)"
        ).fetchone()[0]
    return images, embeddings, unused


def _index(capsys, folder: Path) -> dict:
    res = run_cli(capsys, "index", str(folder), "--json")
    assert res.code == 0, res.err
    return res.json()  # type: ignore[return-value]


def _finds_itself_first(capsys, path: Path) -> None:
    res = run_cli(capsys, "similar", "--no-cutoff", str(path), "-k", "3", "--json")
    assert res.code == 0, res.err
    hits = res.json()
    assert hits[0]["path"] == str(path) and hits[0]["score"] > 0.999, hits  # type: ignore[index]


def test_a_file_whose_row_was_lost_is_indexed_again(env, photos: Path, capsys) -> None:
    """An embedding left without its image row (a run killed between the two) must not make
    the next runs take the file for indexed: it is indexed, searchable and reported."""
    _index(capsys, photos)
    victim = photos / "img_0005.jpg"
    with _db(env) as conn:
        conn.execute("DELETE FROM images WHERE path = ?", (str(victim),))
    assert _counts(env) == (11, 12, 1)

    summary = _index(capsys, photos)
    assert (summary["added"], summary["unchanged"], summary["failed"]) == (1, 11, [])
    assert _counts(env) == (12, 12, 0)
    _finds_itself_first(capsys, victim)
    assert _index(capsys, photos)["unchanged"] == 12


def test_a_copy_whose_twin_changed_earlier_in_the_run_is_indexed(
    env, photos: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new copy of a known photo skips decoding; if that photo's only row changes content in
    an earlier batch of the same run, the copy has no twin left: it is decoded, not dropped."""
    _index(capsys, photos)
    copy = photos / "zz_copy.jpg"  # scanned after img_0000.jpg
    shutil.copy(photos / "img_0000.jpg", copy)
    picture(900).save(photos / "img_0000.jpg", "JPEG")
    monkeypatch.setenv("PIXSEARCH_BATCH_SIZE", "1")  # the change is written first, alone

    summary = _index(capsys, photos)
    assert (summary["updated"], summary["added"], summary["failed"]) == (1, 1, [])
    assert _counts(env) == (13, 13, 0)
    _finds_itself_first(capsys, copy)
    _finds_itself_first(capsys, photos / "img_0000.jpg")


def test_the_clean_up_after_a_run_is_one_transaction(env, photos: Path, capsys) -> None:
    """Deleting the rows of vanished files and the embeddings they leave unused commit together:
    a failure in the second statement leaves the first undone, so no embedding is orphaned."""
    _index(capsys, photos)
    (photos / "img_0007.jpg").unlink()
    with _db(env) as conn:
        conn.execute(
            "CREATE TRIGGER fail_embedding_delete BEFORE DELETE ON embeddings "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    settings = Settings()
    with pytest.raises(DBAPIError, match="injected failure"):
        Indexer(Home(settings), get_encoder(settings)).run([str(photos)])
    assert _counts(env) == (12, 12, 0)

    with _db(env) as conn:
        conn.execute("DROP TRIGGER fail_embedding_delete")
    assert _index(capsys, photos)["removed"] == 1
    assert _counts(env) == (11, 11, 0)
