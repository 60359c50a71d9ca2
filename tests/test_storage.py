"""The database is the source of truth: migrations, and the FAISS index derived from it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from indexer import db
from indexer.home import Home
from indexer.settings import Settings
from tests.helpers import run_cli


def test_models_and_migrations_agree(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object})
        diff = compare_metadata(ctx, db.Base.metadata)
        assert diff == []
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    script = ScriptDirectory.from_config(db.alembic_config("sqlite://"))  # type: ignore[arg-type]
    assert script.get_current_head() == db.SCHEMA_REVISION


include_object = db.modelled


def test_old_database_is_migrated_in_place_with_nothing_lost(tmp_path: Path) -> None:
    """tests/fixtures/home-0001.db was written by pixsearch at schema 0001 (5 images)."""
    import shutil

    from sqlalchemy import func, select

    from indexer.db import Caption, Embedding, Image, Library, Model

    home_dir = tmp_path / "home"
    home_dir.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "home-0001.db", home_dir / "pixsearch.db")
    home = Home(Settings(home=home_dir))
    with home.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 5
        assert s.scalar(select(func.count()).select_from(Embedding)) == 5
        assert s.scalars(select(Model.name)).one() == "pixsearch-test-tiny/tiny.pt"
        paths = sorted(s.scalars(select(Image.path)))
        assert paths[0] == "/tmp/fx/photos-0001/img_0000.jpg"
        assert list(s.scalars(select(Library.path))) == ["/tmp/fx/photos-0001"]
        digest = s.scalars(select(Image.content_hash)).first()
        s.add(
            Caption(content_hash=digest, captioner="t", text="a red bicycle", created_at=home.now())
        )
        s.commit()
    with home.engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version == db.SCHEMA_REVISION
        hit = conn.execute(
            text("SELECT rowid FROM captions_fts WHERE captions_fts MATCH 'bicycle'")
        ).all()
        assert len(hit) == 1


def test_0003_drops_clipcap_captions_keyed_without_their_clip(tmp_path: Path) -> None:
    """ClipCap captions of schema 0002 (`clipcap:<folder>`) may sit on the wrong photos: gone."""
    from alembic import command
    from sqlalchemy import select

    from indexer.db import Caption

    home_dir = tmp_path / "home"
    home_dir.mkdir()
    url = f"sqlite:///{home_dir / 'pixsearch.db'}"
    command.upgrade(db.alembic_config(url), "0002")  # type: ignore[arg-type]
    old = [
        ("a" * 32, "clipcap:tiny_captioner", "a purple pentagon"),
        ("b" * 32, "vision-encoder-decoder:vit-gpt2", "a red bicycle"),
    ]
    engine = create_engine(url)
    with engine.begin() as conn:
        for digest, captioner, words in old:
            conn.execute(
                text(
                    "INSERT INTO captions (content_hash, captioner, text, created_at) "
                    "VALUES (:h, :c, :t, '2026-11-30 12:00:00')"
                ),
                {"h": digest, "c": captioner, "t": words},
            )
        matches = "SELECT count(*) FROM captions_fts WHERE captions_fts MATCH :w"
        assert conn.execute(text(matches), {"w": "pentagon"}).scalar() == 1
    engine.dispose()
    home = Home(Settings(home=home_dir))  # opening the home upgrades it
    with home.session() as s:
        kept = [(c.content_hash, c.captioner, c.text) for c in s.scalars(select(Caption))]
    assert kept == [old[1]]
    with home.engine.connect() as conn:
        assert conn.execute(text(matches), {"w": "pentagon"}).scalar() == 0
        assert conn.execute(text(matches), {"w": "bicycle"}).scalar() == 1
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version == db.SCHEMA_REVISION


def test_the_alembic_command_line_works_too(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={url}", "upgrade", "head"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    with create_engine(url).connect() as conn:
        assert (
            conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            == db.SCHEMA_REVISION
        )


def _index_path() -> Path:
    home = Home(Settings())
    model = home.model_row(_model_name())
    assert model is not None
    return home.index_path(model.name)


def _model_name() -> str:
    from sqlalchemy import select

    from indexer.db import Model

    with Home(Settings()).session() as s:
        return s.scalars(select(Model.name)).one()


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "stale"])
def test_damaged_index_is_rebuilt_with_a_log_line(
    env, database, photos: Path, capsys, caplog, damage: str
) -> None:
    run_cli(capsys, "index", str(photos))
    expected = run_cli(capsys, "search", "a cat", "-k", "12", "--json").json()
    path = _index_path()
    stale = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    else:  # an index from an older state: one photo since removed
        (photos / "img_0000.jpg").unlink()
        run_cli(capsys, "index", str(photos))
        expected = run_cli(capsys, "search", "a cat", "-k", "12", "--json").json()
        path.write_bytes(stale)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = run_cli(capsys, "search", "a cat", "-k", "12", "--json").json()
    assert got == expected
    assert any("rebuilt it from" in r.getMessage() for r in caplog.records)
    # The rebuilt index was saved: the next command finds it valid and says nothing.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_cli(capsys, "search", "a cat", "--json")
    assert not any("rebuilt" in r.getMessage() for r in caplog.records)
