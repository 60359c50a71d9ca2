"""The database, source of truth: SQLAlchemy 2 models, engine set-up and migrations."""

from __future__ import annotations

import logging
import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger(__name__)

#: The Alembic revision this code expects; a test checks it is the head of migrations/.
SCHEMA_REVISION = "0005"


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED = re.compile("\x00([0-9a-f]{4})")


def encode_path(path: str) -> str:
    """A path as storable UTF-8 text. A Linux file name is bytes; the bytes that are not
    UTF-8 come from `os.fsdecode` as lone surrogates, which UTF-8 cannot hold: each becomes
    NUL and four hex digits. No path holds a NUL, so this is lossless, and it maps character
    by character, so a folder's prefix stays the prefix of its files."""
    return _SURROGATE.sub(lambda m: f"\x00{ord(m.group()):04x}", path)


def decode_path(text: str) -> str:
    """The inverse of `encode_path`."""
    if "\x00" not in text:
        return text
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)


class FsPath(TypeDecorator[str]):
    """A file system path stored as TEXT, any file name included (see `encode_path`)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else encode_path(value)

    def process_result_value(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else decode_path(value)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Image(Base):
    """One row per image file. Its id is also its id in the FAISS index."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(32), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    taken_at: Mapped[datetime | None] = mapped_column()
    camera_make: Mapped[str | None] = mapped_column(String(64))
    camera_model: Mapped[str | None] = mapped_column(String(64))
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    indexed_at: Mapped[datetime]

    # AUTOINCREMENT: an id is never reused, so a stale FAISS hit or a client's old link
    # can never point at a different photo. The indexes serve the metadata filters
    # (migration 0005): a date filter is two range scans of the first.
    __table_args__ = (
        Index("ix_images_taken_mtime", "taken_at", "mtime_ns"),
        Index("ix_images_format", "format"),
        Index("ix_images_camera", "camera_make", "camera_model"),
        {"sqlite_autoincrement": True},
    )


class Model(Base):
    """An embedding model: open_clip architecture plus weights."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    dim: Mapped[int] = mapped_column(Integer)
    #: Bumped by every write that changes this model's set of vectors; the FAISS
    #: index records the generation it was built from, so staleness is one comparison.
    generation: Mapped[int] = mapped_column(Integer, default=0)


class Embedding(Base):
    """A unit-norm float32 vector per (file content, model): identical files share one."""

    __tablename__ = "embeddings"

    content_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_embeddings_model", "model_id"),)


class Caption(Base):
    """A generated caption per (file content, captioner): computed once, kept."""

    __tablename__ = "captions"

    content_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    captioner: Mapped[str] = mapped_column(String(200), primary_key=True)
    text: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime]


class Library(Base):
    """A folder (or file) the user indexed: the API serves files from these only."""

    __tablename__ = "libraries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    added_at: Mapped[datetime]


#: SQLite objects that the ORM does not model: the FTS5 index over captions and its triggers.
FTS_TABLES = ("captions_fts",)


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    # Before the first table exists (no effect later): a 2 KB float32 embedding fills a
    # 4 KB page alone (4 KB per image); 16 KB pages hold seven (2.3 KB per image).
    cur.execute("PRAGMA page_size=16384")
    # WAL lets searches read while an indexing run writes; NORMAL is durable at each
    # checkpoint and safe against corruption in WAL mode.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    _common_pragmas(cur)


def _read_only_pragmas(dbapi_conn: object, _record: object) -> None:
    # The journal mode cannot change on a read-only file: left as it is.
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("PRAGMA query_only=ON")
    _common_pragmas(cur)


def _common_pragmas(cur: Any) -> None:
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL mode and a generous busy timeout."""
    engine = create_engine(url, connect_args={"timeout": 60} if url.startswith("sqlite") else {})
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_read_only_engine(path: Path) -> Engine:
    """An engine reading the SQLite file `path` in a folder that cannot be written.

    SQLite reads a WAL database read-only only through its -shm file: when the folder has
    none, the file is opened `immutable` (no locks, no WAL), which is right for a database
    closed cleanly (its WAL checkpointed into the file).
    """
    shm = path.with_name(path.name + "-shm")
    wal = path.with_name(path.name + "-wal")
    has_wal = wal.is_file() and wal.stat().st_size > 0
    options = "mode=ro" if shm.is_file() and has_wal else "mode=ro&immutable=1"
    if has_wal and not shm.is_file():
        log.warning("%s has changes in its WAL file that a read-only folder cannot replay", path)
    uri = f"file:{quote(str(path))}?{options}"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)

    # The URL names the file (a file pool, not an in-memory one); `creator` opens it.
    engine = create_engine(f"sqlite:///{path}", creator=connect)
    event.listen(engine, "connect", _read_only_pragmas)
    return engine


def migrations_dir() -> Path:
    """Where the Alembic scripts live: the installed copy, or the repository's migrations/."""
    here = Path(__file__).resolve().parent
    # The wheel puts them in indexer/migrations (pyproject's force-include); it is looked at
    # first, since an installation's parent folder is site-packages, shared with others.
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("pixsearch's migrations folder is missing from the installation")


def alembic_config(url: str) -> object:
    """An Alembic Config for `url` that needs no alembic.ini."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, *, read_only: bool = False) -> None:
    """Bring the schema to the head revision, importing Alembic only when there is work.

    A `read_only` database must already be at the head revision.
    """
    with engine.connect() as conn:
        try:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except OperationalError:  # no table yet: a new database
            current = None
    if current == SCHEMA_REVISION:
        return
    if read_only:
        from indexer.errors import HomeError

        raise HomeError(
            f"the database {engine.url.database} is at schema revision {current or 'none'}, "
            f"this pixsearch needs {SCHEMA_REVISION}, and its folder is read-only"
        )
    from alembic import command

    log.info("migrating database from %s to %s", current or "empty", SCHEMA_REVISION)
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            # pysqlite runs DDL outside any transaction: without this, a crash (kill -9) mid-
            # migration leaves half a schema that every later run fails to upgrade. IMMEDIATE
            # also makes a second process opening a new home wait, then find it migrated.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        cfg.attributes["connection"] = conn  # type: ignore[attr-defined]
        command.upgrade(cfg, "head")  # type: ignore[arg-type]
