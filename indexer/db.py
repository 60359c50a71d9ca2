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
    BigInteger,
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
    inspect,
    make_url,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger(__name__)

#: PostgreSQL advisory lock key held while migrating (any constant no other lock uses).
MIGRATION_LOCK = 0x70697873_00000001

#: The Alembic revision this code expects; a test checks it is the head of migrations/.
SCHEMA_REVISION = "0006"


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED = re.compile("\x00([0-9a-f]{4})")
#: PostgreSQL's text cannot hold NUL: there the escape is U+0001, escaped itself when a name
#: holds one (a name can hold any character but NUL and '/').
_PG_SURROGATE = re.compile("[\ud800-\udfff\x01]")
_PG_ESCAPED = re.compile("\x01([0-9a-f]{4})")


def encode_path(path: str, dialect: str = "sqlite") -> str:
    """A path as storable UTF-8 text. A Linux file name is bytes; the bytes that are not
    UTF-8 come from `os.fsdecode` as lone surrogates, which UTF-8 cannot hold: each becomes
    NUL (U+0001 on PostgreSQL, see `_PG_SURROGATE`) and four hex digits. This is lossless,
    and it maps character by character, so a folder's prefix stays the prefix of its files."""
    if dialect == "postgresql":
        return _PG_SURROGATE.sub(lambda m: f"\x01{ord(m.group()):04x}", path)
    return _SURROGATE.sub(lambda m: f"\x00{ord(m.group()):04x}", path)


def decode_path(text: str, dialect: str = "sqlite") -> str:
    """The inverse of `encode_path`."""
    if dialect == "postgresql":
        if "\x01" not in text:
            return text
        return _PG_ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)
    if "\x00" not in text:
        return text
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)


#: Paths compare byte by byte (folder prefixes are ranges on the path index): PostgreSQL's
#: database collation (en_US.UTF-8 and the like) would sort '/' among letters.
PATH_TEXT = String().with_variant(String(collation="C"), "postgresql")
#: Sizes and nanosecond times need 64 bits; SQLite's INTEGER has them, PostgreSQL's has 32.
BIG_INT = Integer().with_variant(BigInteger(), "postgresql")


class FsPath(TypeDecorator[str]):
    """A file system path stored as TEXT, any file name included (see `encode_path`)."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        return dialect.type_descriptor(PATH_TEXT)

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else encode_path(value, dialect.name)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else decode_path(value, dialect.name)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Image(Base):
    """One row per image file. Its id is also its id in the FAISS index."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    size: Mapped[int] = mapped_column(BIG_INT)
    mtime_ns: Mapped[int] = mapped_column(BIG_INT)
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
    #: The date the photo is shown, sorted and grouped under: `taken_at`, or without one the
    #: file's modification time as a local time (set on every write: `_set_shown_at`).
    shown_at: Mapped[datetime | None] = mapped_column(index=True)

    # AUTOINCREMENT: an id is never reused, so a stale FAISS hit or a client's old link
    # can never point at a different photo. The indexes serve the metadata filters
    # (migration 0005): a date filter is two range scans of the first.
    __table_args__ = (
        Index("ix_images_taken_mtime", "taken_at", "mtime_ns"),
        Index("ix_images_format", "format"),
        Index("ix_images_camera", "camera_make", "camera_model"),
        {"sqlite_autoincrement": True},
    )


def shown_date(taken_at: datetime | None, mtime_ns: int | None) -> datetime | None:
    """A photo's date: its capture time, else its file's modification time in local time
    (as the date filters date it), None when neither is known."""
    if taken_at is not None:
        return taken_at
    if mtime_ns is None:
        return None
    try:
        return datetime.fromtimestamp(mtime_ns / 1_000_000_000)
    except (OverflowError, OSError, ValueError):
        return None


@event.listens_for(Image, "before_insert")
@event.listens_for(Image, "before_update")
def _set_shown_at(_mapper: object, _conn: object, row: Image) -> None:
    row.shown_at = shown_date(row.taken_at, row.mtime_ns)


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
    """A unit-norm vector per (file content, model), stored as float16 (`indexer.stored`):
    identical files share one."""

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


#: Objects that the ORM does not model: SQLite's FTS5 index over captions (and its shadow
#: tables), PostgreSQL's tsvector column over captions and its GIN index.
FTS_TABLES = ("captions_fts",)
FTS_COLUMNS = ("text_tsv",)
FTS_INDEXES = ("ix_captions_text_tsv",)


def modelled(obj: object, name: str | None, type_: str, *_: object) -> bool:
    """Alembic `include_object`: leave the full-text objects out of autogenerate."""
    if not name:
        return True
    if type_ == "table":
        return not name.startswith(FTS_TABLES)
    return name not in {"column": FTS_COLUMNS, "index": FTS_INDEXES}.get(type_, ())


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


#: create_engine options per database kind.
_ENGINE_OPTIONS: dict[str, dict[str, Any]] = {
    "sqlite": {"connect_args": {"timeout": 60}},
    # A server that answers nothing fails within seconds, not the OS's minutes; a connection
    # the server dropped (a restart, an idle timeout) is replaced before use.
    "postgresql": {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True},
}


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL mode and a generous busy timeout."""
    kind = make_url(url).get_backend_name()
    engine = create_engine(url, **_ENGINE_OPTIONS.get(kind, {}))
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
        current = (
            conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            if inspect(conn).has_table("alembic_version")
            else None  # a new database
        )
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
        elif engine.dialect.name == "postgresql":
            # PostgreSQL's DDL is transactional; the lock makes a second process opening a new
            # database at the same moment wait, then find it migrated (the lock ends with the
            # transaction).
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn  # type: ignore[attr-defined]
        command.upgrade(cfg, "head")  # type: ignore[arg-type]
