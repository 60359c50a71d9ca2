"""The write stage: one transaction per batch, then the FAISS index follows."""

from __future__ import annotations

import logging
import time

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from indexer import stored
from indexer.db import Caption, Embedding, Image, Model
from indexer.dialects import insert_ignoring, write_lock
from indexer.home import Home
from indexer.types import Embeddings, ImageMeta, IndexReport, Prepared
from indexer.vectors import VectorIndex

log = logging.getLogger(__name__)

_META_FIELDS = (
    "width",
    "height",
    "format",
    "taken_at",
    "camera_make",
    "camera_model",
    "gps_lat",
    "gps_lon",
)


def _meta_of(row: Image) -> ImageMeta:
    return ImageMeta(**{f: getattr(row, f) for f in _META_FIELDS})


def _apply_meta(row: Image, meta: ImageMeta) -> None:
    for f in _META_FIELDS:
        setattr(row, f, getattr(meta, f))


class Writer:
    """Writes batches of prepared images; keeps the in-memory FAISS index in step."""

    def __init__(
        self,
        home: Home,
        model: Model,
        index: VectorIndex,
        missing: dict[int, str],
        report: IndexReport,
        movable: dict[int, str] | None = None,
        checkpoint_seconds: float = 120.0,
        *,
        generation: int | None,
    ) -> None:
        self.home = home
        #: The database generation that `index` holds exactly, None when unknown (another
        #: writer committed while it was loaded, or since: PostgreSQL's concurrent runs). The
        #: index is saved stamped with it, and not saved at all while it is unknown: a stamp
        #: must never claim vectors that the file lacks (a reader would trust it).
        self.generation = generation
        self.model = model
        self.index = index
        self.report = report
        self.missing = dict(missing)
        # Rows whose files are gone, then rows kept although their files were not found
        # (see `Plan.movable`): a new file with their content is their move.
        self._missing_by_hash: dict[str, list[int]] = {}
        for row_id, digest in [*(movable or {}).items(), *missing.items()]:
            self._missing_by_hash.setdefault(digest, []).append(row_id)
        self.moved_ids: set[int] = set()
        self._dirty = False
        self._last_save = time.monotonic()
        self._checkpoint = checkpoint_seconds
        # The float16 vector file follows the index (a large collection re-scores from it).
        self.store = home.vector_store(model.name, model.id, model.dim)

    def write(
        self, batch: list[Prepared], embedded: list[Prepared], vectors: Embeddings | None
    ) -> list[Prepared]:
        """Store one batch in a single transaction, then update the index.

        Returns the items that came without pixels and whose content has no stored twin any
        more (no row to copy metadata from, or no embedding): they are not written, and the
        caller must decode and embed them.
        """
        dim = self.model.dim
        fresh = (
            {p.content_hash: vectors[i] for i, p in enumerate(embedded)}
            if vectors is not None
            else {}
        )
        touched: list[int] = []
        vecs: list[np.ndarray] = []
        unplaced: list[Prepared] = []
        saved, moved, generation = self._counts(), set(self.moved_ids), self.generation
        try:
            self._transaction(batch, fresh, dim, touched, vecs, unplaced)
        except BaseException:
            # The transaction rolled back (its generation bump too); the caller may retry.
            self._restore(saved)
            self.moved_ids = moved
            self.generation = generation
            raise
        ids = np.asarray(touched, np.int64)
        # Rows that existed may already be in the index with an older vector.
        stacked = np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)
        self.index.remove(ids)
        self.index.add(ids, stacked)
        if self.store is not None:
            self.store.put(ids, stacked)
        self._dirty = True
        if time.monotonic() - self._last_save > self._checkpoint:
            self.rebuild_if_outgrown()
            self.save()
        return unplaced

    def _transaction(
        self,
        batch: list[Prepared],
        fresh: dict[str, np.ndarray],
        dim: int,
        touched: list[int],
        vecs: list[np.ndarray],
        unplaced: list[Prepared],
    ) -> None:
        with self.home.session() as s, s.begin():
            write_lock(s)
            inserted = self._store_embeddings(s, fresh) if fresh else set()
            # Content embedded before keeps its stored vector, so the index and the database
            # agree even when this run's vector differs in the last bits.
            known = self._known(s, [p for p in batch if p.content_hash not in inserted], dim)
            metas = self._metas(s, [p for p in batch if p.meta is None])
            now = self.home.now()
            for p in batch:
                meta = p.meta or metas.get(p.content_hash)
                vec = (
                    fresh[p.content_hash]
                    if p.content_hash in inserted
                    else known.get(p.content_hash)
                )
                if meta is None or vec is None:
                    unplaced.append(p)
                    continue
                touched.append(self._upsert(s, p, meta, now))
                vecs.append(vec)
            self._bump(s)

    def _bump(self, s: Session) -> None:
        """Bump the generation in the caller's transaction and follow it: the row stays locked
        until commit, so `after - 1` is the state just before this write."""
        self.home.bump_generation(s)
        after = int(s.scalar(select(Model.generation).where(Model.id == self.model.id)) or 0)
        if self.generation is not None and after - 1 != self.generation:
            log.info("another indexing run wrote to the database: the saved index will lag")
        self.generation = after if self.generation == after - 1 else None

    def _counts(self) -> tuple[tuple[int, ...], dict[int, str], dict[str, list[int]]]:
        r = self.report
        counts = (r.added, r.updated, r.unchanged, r.moved)
        return counts, dict(self.missing), {k: list(v) for k, v in self._missing_by_hash.items()}

    def _restore(self, saved: tuple[tuple[int, ...], dict[int, str], dict[str, list[int]]]) -> None:
        r = self.report
        (r.added, r.updated, r.unchanged, r.moved), self.missing, self._missing_by_hash = saved

    def _upsert(self, s: Session, p: Prepared, meta: ImageMeta, now: object) -> int:
        entry = p.job.entry
        if p.job.row_id is not None:
            row = s.get_one(Image, p.job.row_id)
            if p.job.kind == "changed":
                if row.content_hash == p.content_hash:
                    self.report.unchanged += 1  # touched, same content
                else:
                    self.report.updated += 1
            else:
                self.report.updated += 1
        elif self._missing_by_hash.get(p.content_hash):
            # A file gone from its old path reappears here: a move; it keeps its id.
            row_id = self._missing_by_hash[p.content_hash].pop()
            self.missing.pop(row_id, None)
            row = s.get_one(Image, row_id)
            self.report.moved += 1
            self.moved_ids.add(row_id)
        else:
            row = Image(path=entry.path)
            s.add(row)
            self.report.added += 1
        row.path = entry.path
        row.size = entry.size
        row.mtime_ns = entry.mtime_ns
        row.content_hash = p.content_hash
        row.indexed_at = now  # type: ignore[assignment]
        _apply_meta(row, meta)
        s.flush()
        return row.id

    def _store_embeddings(self, s: Session, fresh: dict[str, np.ndarray]) -> set[str]:
        """Insert the vectors of content not stored yet; returns the hashes inserted."""
        have = set(
            s.scalars(
                select(Embedding.content_hash).where(
                    Embedding.model_id == self.model.id, Embedding.content_hash.in_(list(fresh))
                )
            )
        )
        # Ignoring conflicts: another run (PostgreSQL: on another machine) may store the same
        # content at the same moment; sorted, so that two such runs take the keys' locks in
        # one order and never deadlock.
        rows = [
            {
                "content_hash": digest,
                "model_id": self.model.id,
                "vector": stored.encode(fresh[digest]),
            }
            for digest in sorted(set(fresh) - have)
        ]
        insert_ignoring(s, Embedding, rows)
        return set(fresh) - have

    def _known(self, s: Session, items: list[Prepared], dim: int) -> dict[str, np.ndarray]:
        digests = list({p.content_hash for p in items})
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(digests), 900):
            rows = s.execute(
                select(Embedding.content_hash, Embedding.vector).where(
                    Embedding.model_id == self.model.id,
                    Embedding.content_hash.in_(digests[start : start + 900]),
                )
            )
            for digest, blob in rows:
                out[digest] = stored.decode_one(blob, dim)
        return out

    def _metas(self, s: Session, items: list[Prepared]) -> dict[str, ImageMeta]:
        digests = list({p.content_hash for p in items})
        out: dict[str, ImageMeta] = {}
        for start in range(0, len(digests), 900):
            for row in s.scalars(
                select(Image).where(Image.content_hash.in_(digests[start : start + 900]))
            ):
                out.setdefault(row.content_hash, _meta_of(row))
        return out

    def finish(self) -> None:
        """Drop the rows of files gone from disk, and the embeddings and captions no row uses
        any more, in one transaction: a kill midway must not leave an embedding without its
        row, which would pass for indexed content that has no metadata."""
        ids = sorted(self.missing)
        if ids or self.report.updated:
            with self.home.session() as s, s.begin():
                write_lock(s, cleanup=True)
                for start in range(0, len(ids), 900):
                    s.execute(delete(Image).where(Image.id.in_(ids[start : start + 900])))
                # NOT EXISTS, not NOT IN: an anti-join on both databases (PostgreSQL runs a
                # NOT IN over a subquery larger than its work_mem row by row).
                for table in (Embedding, Caption):
                    used = select(Image.id).where(Image.content_hash == table.content_hash)
                    s.execute(delete(table).where(~used.exists()))
                if ids:
                    self._bump(s)
        if ids:
            self.index.remove(np.asarray(ids, np.int64))
            if self.store is not None:
                self.store.drop(np.asarray(ids, np.int64))
            self.report.removed += len(ids)
            self.missing.clear()
            self._dirty = True
        self.rebuild_if_outgrown()

    def rebuild_if_outgrown(self) -> None:
        """Rebuild the index from the stored embeddings if the collection outgrew its kind
        (exact search past 50k vectors, an IVF index grown 4x since it was trained)."""
        self.index.wait_rebuild()  # one started when the index was loaded
        reason = self.index.wants_rebuild()
        if reason is None:
            return
        from indexer.derived import build_source

        log.info("rebuilding the FAISS index (%s): %s", self.index.kind, reason)
        m, place = self.model, self.home.index_path(self.model.name)
        self._stamp_store()  # an on-disk build reads the vector file
        ids, vecs = build_source(self.home, m.name, m.id, m.dim, self.home.policy)
        self.index.replace_with(VectorIndex.build(m.dim, ids, vecs, self.home.policy, place=place))
        self._dirty = True

    def _stamp_store(self) -> None:
        # Stamped like the index: only with a generation it is known to hold exactly.
        if self.store is not None and self.generation is not None:
            self.store.stamp(self.generation)

    def save(self) -> None:
        """Save the index, stamped with the generation the database is at now."""
        if not self._dirty:
            return
        if self.generation is None:
            # The next reader finds the file stale and rebuilds it from the database.
            log.debug("FAISS index not saved: other writers changed the database meanwhile")
            self._last_save = time.monotonic()
            return
        self._stamp_store()
        self.index.save(self.home.index_path(self.model.name), self.generation)
        self._dirty = False
        self._last_save = time.monotonic()
