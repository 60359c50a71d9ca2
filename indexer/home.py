"""A pixsearch home: the data folder with its database and derived FAISS indexes (loaded and
rebuilt by `indexer.indexload`)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import numpy as np
from sqlalchemy import ColumnElement, Engine, event, func, select, update
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.orm import Session

from indexer import db, homeerrors, indexload, stored
from indexer.db import Embedding, Image, Library, Model
from indexer.errors import HomeError
from indexer.policy import Policy
from indexer.postgres import connection_error, is_connection_error, public_url, reason_of
from indexer.rows import collect_vectors
from indexer.settings import Settings
from indexer.types import Embeddings
from indexer.vecstore import VectorStore
from indexer.vectors import Ids, VectorIndex

log = logging.getLogger(__name__)

T = TypeVar("T")


#: The database kinds pixsearch runs on (SQLAlchemy backend names).
SUPPORTED_DATABASES = ("sqlite", "postgresql")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


class Home:
    """Opens (creating and migrating as needed) the database of a data folder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.home).expanduser()
        #: Small answers derived from the database, each with the generation it was read at.
        self._cache: dict[str, tuple[int, object]] = {}

    @cached_property
    def dialect(self) -> str:
        """The kind of database ("sqlite", "postgresql"), from the URL (nothing is opened)."""
        from sqlalchemy.engine import make_url

        try:
            kind = make_url(self.settings.db_url).get_backend_name()
        except Exception:
            raise HomeError(
                "PIXSEARCH_DATABASE_URL is not a database URL "
                "(e.g. postgresql+psycopg://user:password@host/database)"
            ) from None
        if kind not in SUPPORTED_DATABASES:
            raise HomeError(f"pixsearch keeps its data in SQLite or PostgreSQL, not {kind}")
        return kind

    @property
    def db_file(self) -> Path | None:
        """The SQLite file of this home (None for another kind of database URL)."""
        url = self.settings.db_url
        return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None

    def exists(self) -> bool:
        """Whether this home already holds a database (nothing is created by asking).

        A database path that is there but is no file (a folder, a dangling link) is an error,
        not an empty home.
        """
        path = self.db_file
        if path is None:
            return True
        if path.is_file():
            return True
        if path.is_symlink() and not path.exists():
            raise HomeError(f"the database {path} is a symbolic link to nothing")
        if path.exists():
            what = "a folder" if path.is_dir() else "not a regular file"
            raise HomeError(f"the database {path} is {what}; move it away or restore the file")
        return False

    @property
    def read_only(self) -> bool:
        """Whether the home's folder (or its existing database file) cannot be written."""
        path = self.db_file
        if path is None or not self.path.is_dir():
            return False
        return not os.access(self.path, os.W_OK) or (
            path.is_file() and not os.access(path, os.W_OK)
        )

    def check_writable(self) -> None:
        """Raise a HomeError unless the home can be written (indexing)."""
        if self.read_only:
            raise homeerrors.read_only(self.path)

    @cached_property
    def engine(self) -> Engine:
        """The database engine; creates the folder and migrates the schema on first use.

        A home in a folder that cannot be written is opened read-only (searching works).
        """
        path = self.db_file
        url = self.settings.db_url
        self.dialect  # noqa: B018 - a URL that is no URL fails here, in the same words everywhere
        try:
            if path is not None and self.read_only:
                engine = db.make_read_only_engine(path)
                read_only = True
            else:
                if path is not None:  # a server's database: the folder waits for an index
                    self.path.mkdir(parents=True, exist_ok=True)
                engine = db.make_engine(url)
                read_only = False
            translate = self._TRANSLATORS.get(engine.dialect.name)
            if translate is not None:
                event.listen(engine, "handle_error", getattr(self, translate))
            db.upgrade(engine, read_only=read_only)
        except OSError as exc:
            raise homeerrors.from_os_error(exc, self.path) or HomeError(
                f"cannot use data folder {self.path}: {exc.strerror or exc}"
            ) from None
        except ImportError as exc:  # the URL names a driver that is not installed
            raise HomeError(
                f"the database {public_url(url)} needs the Python package {exc.name}: "
                "install pixsearch with the 'postgres' extra (pip install 'pixsearch[postgres]')"
            ) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("sqlalchemy", "alembic")):
                reason = " ".join(reason_of(exc).split())[:200]
                raise HomeError(f"cannot open database {public_url(url)}: {reason}") from None
            raise
        return engine

    #: `handle_error` hooks per database kind, by method name.
    _TRANSLATORS = {"sqlite": "_translate", "postgresql": "_translate_pg"}

    def _translate(self, context: ExceptionContext) -> None:
        """SQLAlchemy `handle_error` hook: SQLite's full-disk, damage and read-only errors
        become one-line HomeErrors (no SQL, no parameters) wherever they happen."""
        if self.db_file is None:  # an in-memory database: no file to speak of
            return
        error = homeerrors.from_sqlite_error(context.original_exception, self.db_file, self.path)
        if error is not None:
            raise error

    def _translate_pg(self, context: ExceptionContext) -> None:
        """SQLAlchemy `handle_error` hook: a PostgreSQL server that cannot be reached (or
        refuses the credentials, or lost the connection) is one HomeError line."""
        exc = context.original_exception
        if context.is_disconnect or is_connection_error(exc):
            raise connection_error(exc, self.settings.db_url)

    def session(self) -> Session:
        """A new ORM session (use as a context manager)."""
        return Session(self.engine, expire_on_commit=False)

    # -- models -------------------------------------------------------------------------------
    def model_row(self, key: str) -> Model | None:
        """The stored model of this name, if any."""
        with self.session() as s:
            return s.scalar(select(Model).where(Model.name == key))

    def ensure_model(self, key: str, dim: int) -> Model:
        """The stored model of this name, created if new."""
        from indexer.dialects import insert_ignoring

        with self.session() as s, s.begin():
            # Two indexing runs (PostgreSQL: on two machines) may meet a new model at once.
            insert_ignoring(s, Model, [{"name": key, "dim": dim, "generation": 0}])
            row = s.scalars(select(Model).where(Model.name == key)).one()
            if row.dim != dim:
                raise HomeError(f"model {key} is stored with dimension {row.dim}, not {dim}")
            return row

    def generation(self, model_id: int) -> int:
        """The model's current generation: it changes with every write to its vectors."""
        with self.engine.connect() as conn:
            value = conn.scalar(select(Model.generation).where(Model.id == model_id))
        return int(value or 0)

    def per_generation(self, name: str, compute: Callable[[], T]) -> T:
        """`compute()`, read again only when the database changed since (any model's
        generation moved): for small answers the page asks for on every load."""
        with self.engine.connect() as conn:
            generation = int(conn.scalar(select(func.max(Model.generation))) or 0)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == generation:
            return cached[1]  # type: ignore[return-value]
        answer = compute()
        self._cache[name] = (generation, answer)
        return answer

    @staticmethod
    def bump_generation(s: Session) -> None:
        """Mark every model's vector set as changed, inside the caller's transaction."""
        s.execute(update(Model).values(generation=Model.generation + 1))

    # -- embeddings and the FAISS index -------------------------------------------------------
    def index_path(self, key: str) -> Path:
        """Where the FAISS index of a model is kept."""
        return self.path / f"index-{_slug(key)}.faiss"

    def _of_model(self, model_id: int) -> ColumnElement[bool]:
        """`Embedding.model_id == model_id`, on SQLite written `model_id + 0` (see
        `stored_vectors`): a planner hint SQLite needs and PostgreSQL's planner does not."""
        column = Embedding.model_id + 0 if self.dialect == "sqlite" else Embedding.model_id
        return column == model_id

    def vectors_path(self, key: str) -> Path:
        """Where the float16 vector file of a model is kept (see `indexer.vecstore`)."""
        return self.path / f"vectors-{_slug(key)}.f16"

    @property
    def policy(self) -> Policy:
        """Which index kind for which collection size (the settings' thresholds)."""
        return Policy.from_settings(self.settings)

    def vector_store(self, key: str, model_id: int, dim: int) -> VectorStore | None:
        """The model's vector file (rebuilt if missing or stale) from `vector_file_min`."""
        from indexer import derived

        # The file's existence first: counting is a join over the whole collection.
        if not self.vectors_path(key).exists() and (
            self.count_vectors(model_id) < self.settings.vector_file_min
        ):
            return None
        return derived.load_store(self, key, model_id, dim)

    def count_vectors(self, model_id: int) -> int:
        """How many images have an embedding for this model."""
        # `model_id + 0` (see `stored_vectors`): counted over the embeddings' primary-key
        # index, not through the model_id index and the table rows (1M images: 0.3-0.5 s
        # instead of 1.6-9 s, on every index load).
        with self.engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count())
                    .select_from(Image)
                    .join(Embedding, Embedding.content_hash == Image.content_hash)
                    .where(self._of_model(model_id))
                )
                or 0
            )

    def stored_vectors(
        self, model_id: int, dim: int, ids: Ids | None = None
    ) -> tuple[Ids, Embeddings]:
        """(image ids, vectors) of every image with an embedding for the model, or of `ids`."""
        # `model_id + 0`: without it SQLite (no ANALYZE statistics) drives the join from the
        # embeddings' model_id index, i.e. reads every embedding of the model to re-score a
        # few dozen candidates (0.25 s per query at 10k images, O(n)); with it, the plan is
        # images by id, then embeddings by content hash.
        stmt = (
            select(Image.id, Embedding.vector)
            .join(Embedding, Embedding.content_hash == Image.content_hash)
            .where(self._of_model(model_id))
            .order_by(Image.id)
        )
        with self.engine.connect() as conn:
            if ids is None:
                # Filled block by block into one array: no second copy of every vector.
                expected = self.count_vectors(model_id)
                return collect_vectors(conn.execute(stmt), dim, expected)
            out_ids: list[int] = []
            chunks: list[bytes] = []
            for start in range(0, len(ids), 900):
                part = [int(i) for i in ids[start : start + 900]]
                for row in conn.execute(stmt.where(Image.id.in_(part))):
                    out_ids.append(row[0])
                    chunks.append(row[1])
        vecs = stored.decode(chunks, dim)
        return np.asarray(out_ids, dtype=np.int64), vecs

    def load_index(
        self, key: str, model_id: int, dim: int, *, background: bool = True, rebuild: str = ""
    ) -> VectorIndex:
        """The model's FAISS index: the saved one if it is intact and matches the database,
        else rebuilt (and saved); `rebuild`: why not to use the saved one at all (see
        `indexer.indexload.load_index`)."""
        return indexload.load_index(
            self, key, model_id, dim, background=background, rebuild=rebuild
        )

    def rebuild_index(
        self,
        index: VectorIndex,
        key: str,
        model_id: int,
        dim: int,
        reason: str,
        *,
        background: bool = True,
    ) -> None:
        """Rebuild `index` in place from the stored embeddings, then save it atomically (see
        `indexer.indexload.rebuild_index`)."""
        indexload.rebuild_index(self, index, key, model_id, dim, reason, background=background)

    # -- libraries ----------------------------------------------------------------------------
    def add_libraries(self, paths: list[str]) -> None:
        """Record indexed folders (or files): the API serves files from these only."""
        from indexer.dialects import insert_ignoring

        with self.session() as s, s.begin():
            insert_ignoring(s, Library, [{"path": p, "added_at": self.now()} for p in paths])

    def libraries(self) -> list[str]:
        """Every indexed folder or file."""
        with self.session() as s:
            return list(s.scalars(select(Library.path)))

    # -- metadata -----------------------------------------------------------------------------
    def images_by_id(self, ids: list[int]) -> dict[int, Image]:
        """Image rows by id (missing ids are simply absent)."""
        out: dict[int, Image] = {}
        ids = [i for i in ids if 0 < i < 2**63]  # others cannot be SQLite row ids
        with self.session() as s:
            for start in range(0, len(ids), 900):
                part = ids[start : start + 900]
                for row in s.scalars(select(Image).where(Image.id.in_(part))):
                    out[row.id] = row
        return out

    def warm_images(self) -> None:
        """Read every image row once (a scan of the table, ~150 bytes a photo), so that the
        rows of a search's hits are in memory: at 10M photos each query's 20 hits cost 20
        random disk reads (~40 ms here) until they were."""
        started = time.perf_counter()
        try:
            with self.engine.connect() as conn:
                conn.scalar(select(func.max(Image.width)))  # no index on it: the whole table
        except Exception as exc:  # a warm-up only: queries read the rows anyway
            log.info("could not read the image rows ahead: %s", exc)
            return
        log.info("image rows read ahead in %.1fs", time.perf_counter() - started)

    def image_by_path(self, path: str) -> Image | None:
        """The image row of a path, if indexed."""
        with self.session() as s:
            return s.scalar(select(Image).where(Image.path == path))

    def image_count(self) -> int:
        """Number of image rows."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Image)) or 0)

    def size_on_disk(self) -> int:
        """Bytes used by the home folder's files."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    @staticmethod
    def now() -> datetime:
        """Timestamp for `indexed_at`."""
        return datetime.now().replace(microsecond=0)
