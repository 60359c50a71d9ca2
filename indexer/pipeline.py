"""The indexing run as small stages: scan → plan → read → embed → write (the plan stage is
`indexer.plan`, the read stage `indexer.reading`; this module runs them)."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import DatabaseError, IntegrityError, StatementError

from indexer import homeerrors
from indexer.db import Embedding, Image
from indexer.encoder import ClipEncoder
from indexer.home import Home
from indexer.housekeeping import home_lock, remove_stale_temp_files
from indexer.plan import plan, warn_kept
from indexer.reading import read
from indexer.scan import Root, normalise_roots, scan
from indexer.types import Embeddings, Failure, IndexReport, Job, Prepared
from indexer.writer import Writer

if TYPE_CHECKING:
    from indexer.cluster import Cluster

log = logging.getLogger(__name__)

#: Seconds between saves of the FAISS index during a long run (it is also saved at the end).
CHECKPOINT_SECONDS = 120.0
#: Photos in a run's first batch; later batches double up to the configured batch size.
FIRST_BATCH = 8
#: On a home that other machines may share, a leftover temporary file is removed only once
#: this old (seconds): no save takes a day, and its process id may be another machine's.
SHARED_TEMP_AGE = 86400.0


class ProgressSink(Protocol):
    """Where a run reports progress; the CLI draws a bar, tests pass nothing."""

    def start(self, total: int) -> None: ...
    def advance(self, n: int) -> None: ...


class Indexer:
    """Runs indexing passes over folders into a home, with one encoder."""

    def __init__(
        self,
        home: Home,
        encoder: ClipEncoder,
        progress: ProgressSink | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.home = home
        self.encoder = encoder
        self.settings = home.settings
        self.progress = progress
        # Where files are read and embedded: here, or on a Ray cluster (the scan, the plan and
        # the writes stay here either way).
        self.cluster = cluster
        self._embedded: set[str] = set()

    def _embedded_hashes(self) -> set[str]:
        if not self.home.exists():
            return set()
        model = self.home.model_row(self.encoder.key)
        if model is None:
            return set()
        # Content counts as known only while an image row uses it: an embedding left without
        # one (by a killed run) has no metadata to copy, so its files must be read in full.
        used = select(Image.content_hash)
        stmt = select(Embedding.content_hash).where(
            Embedding.model_id == model.id, Embedding.content_hash.in_(used)
        )
        with self.home.engine.connect() as conn:
            return set(conn.scalars(stmt))

    def run(
        self, paths: Sequence[str | os.PathLike[str]], gone: Collection[str] = ()
    ) -> IndexReport:
        """Index the files under `paths`: add new, update changed, follow moves, drop deleted.

        `gone`: files known to have been deleted or moved away (file-system events), removed
        even from a folder that now lists nothing (see `plan`).
        """
        self.home.check_writable()
        if not self.home.exists():
            # A new home is created only once the model is known to load: a missing
            # checkpoint fails with one clear error and leaves nothing behind.
            self.encoder.load()
        roots = normalise_roots(paths)
        try:
            with home_lock(self.home, [r.path for r in roots]):
                # A shared home (PostgreSQL): another machine's temporary files look orphaned.
                shared = self.home.db_file is None
                remove_stale_temp_files(
                    self.home.path,
                    *self.home.path.glob("thumbnails/*"),
                    min_age=SHARED_TEMP_AGE if shared else 0.0,
                )
                return self._run(roots, gone)
        except OSError as exc:  # a full disk, a file system turned read-only
            error = homeerrors.from_os_error(exc, self.home.path)
            if error is None:
                raise
            raise error from None

    def _run(self, roots: list[Root], gone: Collection[str]) -> IndexReport:
        started = time.perf_counter()
        embedded = self._embedded = self._embedded_hashes()
        entries = scan(roots, self.settings.include_hidden)
        work = plan(self.home, roots, entries, embedded, gone)
        report = IndexReport(
            scanned=work.scanned, unchanged=work.unchanged, failed=list(work.failed)
        )
        if work.jobs:
            self.encoder.load()  # fails here, before anything is written
            if self.cluster is not None:
                self.cluster.connect()  # and so does a cluster that cannot be joined
        writer: Writer | None = None
        if work.jobs or work.missing:
            model = self.home.ensure_model(self.encoder.key, self.encoder.dim)
            # The index holds generation `before` exactly only if no other writer (PostgreSQL:
            # another machine's run) committed while it was loaded.
            before = self.home.generation(model.id)
            index = self.home.load_index(self.encoder.key, model.id, model.dim)
            same = self.home.generation(model.id) == before
            writer = Writer(
                self.home,
                model,
                index,
                work.missing,
                report,
                work.movable,
                generation=before if same else None,
            )
            self.home.add_libraries([r.path for r in roots if r.exists])
        try:
            if writer is not None and work.jobs:
                self._embed_all(work.jobs, embedded, writer, report)
            if writer is not None:
                writer.finish()
        finally:
            if writer is not None:
                writer.save()
            report.seconds = time.perf_counter() - started
        warn_kept(work.kept, writer.moved_ids if writer is not None else set())
        return report

    def _embed_all(
        self, jobs: list[Job], embedded: set[str], writer: Writer, report: IndexReport
    ) -> None:
        if self.progress is not None:
            self.progress.start(len(jobs))
        if self.cluster is not None:
            preprocess = self.encoder.preprocess
            # CPU actors run the driver's calibrated precision: no actor calibrates again.
            cpu_precision = self.encoder.precision if self.encoder.device == "cpu" else None
            for done, fresh in self.cluster.embed(
                jobs, embedded, preprocess, self.settings, cpu_precision
            ):
                report.failed.extend(r for r in done if isinstance(r, Failure))
                self._advance(sum(isinstance(r, Failure) for r in done))
                ready = [r for r in done if isinstance(r, Prepared)]
                if ready:
                    self._flush(ready, writer, report, fresh)
            return
        batch: list[Prepared] = []
        decoded = 0
        # The first batches are small, so the model starts as soon as a few photos are
        # decoded (not after a full batch: ~0.3 s of idle model at 12 MP), then double.
        target = min(self.settings.batch_size, FIRST_BATCH)
        for result in self._read_stage(jobs, embedded):
            if isinstance(result, Failure):
                report.failed.append(result)
                self._advance(1)
                continue
            batch.append(result)
            decoded += result.pixels is not None
            if decoded >= target or len(batch) >= 4 * self.settings.batch_size:
                self._flush(batch, writer, report)
                batch, decoded = [], 0
                target = min(self.settings.batch_size, 2 * target)
        if batch:
            self._flush(batch, writer, report)

    def _read_stage(self, jobs: list[Job], embedded: set[str]) -> Iterator[Prepared | Failure]:
        workers = self.settings.workers or os.cpu_count() or 1
        ahead = max(4 * self.settings.batch_size, 2 * workers)
        pending: deque[Future[Prepared | Failure]] = deque()
        limit = self.settings.max_image_pixels
        preprocess = self.encoder.preprocess
        # Pillow and hashlib release the GIL while decoding and hashing, so threads overlap
        # with each other and with the model, without pickling pixels between processes.
        with ThreadPoolExecutor(workers, thread_name_prefix="pixsearch-read") as pool:
            try:
                it = iter(jobs)
                for job in it:
                    pending.append(pool.submit(read, job, embedded, preprocess, limit))
                    if len(pending) >= ahead:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()

    def _flush(
        self,
        batch: list[Prepared],
        writer: Writer,
        report: IndexReport,
        fresh: dict[str, Embeddings] | None = None,
    ) -> None:
        """Embed (unless `fresh` holds the vectors by content hash) and store one batch."""
        try:
            unplaced = self._write(batch, writer, fresh)
        except (StatementError, ValueError) as exc:
            if not _one_item_error(exc):
                raise
            # Something in one item (a value the database refuses) must not cost the batch,
            # nor end the run: the batch is written again item by item.
            log.warning("a batch could not be stored (%s): storing its files one by one", exc)
            unplaced = []
            for p in batch:
                try:
                    unplaced += self._write([p], writer, fresh)
                except (StatementError, ValueError) as item_exc:
                    if not _one_item_error(item_exc):
                        raise
                    why = str(getattr(item_exc, "orig", None) or item_exc).splitlines()[0]
                    report.failed.append(Failure(p.job.entry.path, f"cannot be stored: {why}"))
        if unplaced:
            # Their content's only row changed or went earlier in this run: no twin is left
            # to copy from, so they are read in full like new files.
            log.info("%d file(s) lost their indexed twin during the run: decoding", len(unplaced))
            limit = self.settings.max_image_pixels
            again: list[Prepared] = []
            for p in unplaced:
                result = read(p.job, set(), self.encoder.preprocess, limit)
                if isinstance(result, Failure):
                    report.failed.append(result)
                else:
                    again.append(result)
            # Decoded items carry their own metadata and vector; none can be left over, but
            # a file must never vanish from a run without a word.
            lost = self._write(again, writer) if again else []
            report.failed.extend(Failure(p.job.entry.path, "could not be stored") for p in lost)
        self._advance(len(batch))

    def _write(
        self, batch: list[Prepared], writer: Writer, fresh: dict[str, Embeddings] | None = None
    ) -> list[Prepared]:
        vectors: Embeddings | None
        if fresh is not None:  # embedded elsewhere (a Ray worker): one vector per content
            with_pixels = [p for p in batch if p.content_hash in fresh]
            vectors = (
                np.stack([fresh[p.content_hash] for p in with_pixels]) if with_pixels else None
            )
        else:
            with_pixels = [p for p in batch if p.pixels is not None]
            vectors = (
                self.encoder.embed_pixels(np.stack([p.pixels for p in with_pixels]))  # type: ignore[misc]
                if with_pixels
                else None
            )
        unplaced = writer.write(batch, with_pixels, vectors)
        # Later copies of the same content in this run need no decoding either.
        self._embedded.update(p.content_hash for p in with_pixels)
        return unplaced

    def _advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(n)


def _one_item_error(exc: Exception) -> bool:
    """Whether a failed write is about the data written (a value, a constraint), not about
    the database itself (locked, full, read-only, damaged), which would fail every item."""
    return isinstance(exc, IntegrityError) or not isinstance(exc, DatabaseError)
