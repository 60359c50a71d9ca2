"""The indexing run as small stages: scan → read → embed → write."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Collection, Container, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.exc import DatabaseError, IntegrityError, StatementError

from indexer import homeerrors
from indexer.db import Embedding, Image
from indexer.encoder import ClipEncoder, Preprocess, prepare_pixels
from indexer.errors import UnreadableImage
from indexer.home import Home
from indexer.housekeeping import home_lock, remove_stale_temp_files
from indexer.imageio import DRAFT_OVERSAMPLE, content_hash, decode, max_file_bytes, read_file
from indexer.scan import EmptyFolder, Root, normalise_roots, scan, under
from indexer.types import Embeddings, Failure, FileEntry, IndexReport, Job, Prepared
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


@dataclass(slots=True)
class Plan:
    """What the scan and the database say must happen."""

    jobs: list[Job] = field(default_factory=list)
    missing: dict[int, str] = field(default_factory=dict)  # row id -> content hash
    # Rows kept although their files were not found (under an empty folder): not deleted,
    # but a new file with the same content is their move (an emptied inbox), not a twin.
    movable: dict[int, str] = field(default_factory=dict)
    # (folder, warning, ids of its kept rows): said after the run, for the rows not moved.
    kept: list[tuple[str, str, list[int]]] = field(default_factory=list)
    unchanged: int = 0
    scanned: int = 0
    failed: list[Failure] = field(default_factory=list)


def plan(
    home: Home,
    roots: Sequence[Root],
    entries: Iterator[FileEntry | Failure | EmptyFolder],
    embedded: set[str],
    gone: Collection[str] = (),
) -> Plan:
    """Compare the files on disk with the rows under the roots (the scan stage's result).

    Only rows whose files were seen to be gone are marked missing: rows under a folder that
    could not be listed, or that lists nothing at all (an unmounted drive?), are kept, unless
    their paths are in `gone` (files a file-system event said were deleted or moved away).
    """
    p = Plan()
    found: dict[str, FileEntry] = {}
    kept: list[str] = []
    empty: list[str] = []
    for item in entries:
        if isinstance(item, EmptyFolder):
            empty.append(item.path)
        elif isinstance(item, Failure):
            p.failed.append(item)
            if item.keep:
                kept.append(item.path)
        else:
            found[item.path] = item
    p.scanned = len(found) + len(p.failed)
    rows = _rows_under(home, roots) if home.exists() else {}
    for path, entry in found.items():
        row = rows.get(path)
        if row is None:
            p.jobs.append(Job(entry, "new"))
            continue
        row_id, size, mtime_ns, digest = row
        if size != entry.size or mtime_ns != entry.mtime_ns:
            p.jobs.append(Job(entry, "changed", row_id))
        elif digest not in embedded:
            p.jobs.append(Job(entry, "reembed", row_id))
        else:
            p.unchanged += 1
    root_paths = {root.path for root in roots}
    keep = _Keep(kept, [f for f in empty if f not in root_paths])
    for root in roots:
        here = [(path, row) for path, row in rows.items() if under(root, path)]
        if not root.exists:
            continue  # an unmounted drive or a typo must never delete anything
        # A row for the root folder itself (it was a file once) is a phantom, not a photo.
        held = [path for path, _ in here if path != root.path]
        if root.is_dir and held and not any(under(root, path) for path in found):
            p.missing.update((rows[path][0], rows[path][3]) for path in held if path in gone)
            held = [path for path in held if path not in gone]
            ids = [rows[path][0] for path in held]
            p.kept.append((root.path, "%s holds no images now, but %d were indexed there", ids))
            p.movable.update((rows[path][0], rows[path][3]) for path in held)
            continue
        for path, (row_id, _, _, digest) in here:
            if path in found:
                continue
            if path not in gone and keep(path, row_id):
                if not keep.unseen(path):  # a file that may be there but cannot be looked at
                    p.movable[row_id] = digest
            else:
                p.missing[row_id] = digest
    p.kept += [
        (folder.rstrip(os.sep), "%s is empty now, but %d images were indexed there", ids)
        for folder, ids in keep.empty.items()
        if ids
    ]
    return p


def warn_kept(kept: list[tuple[str, str, list[int]]], moved: set[int]) -> None:
    """Say which folders kept photos although their files were not found, unless the photos
    turned up elsewhere in the run (moved out of a folder they left empty)."""
    for folder, warning, ids in kept:
        count = sum(i not in moved for i in ids)
        if count:
            log.warning(warning + ": keeping them (an unmounted drive?)", folder, count)


class _Keep:
    """Which rows a run keeps although their files were not found: those under folders that
    could not be listed or list nothing (the latter's row ids noted per folder)."""

    def __init__(self, unseen: list[str], empty: list[str]) -> None:
        self.unseen_paths = set(unseen)
        self.unseen_dirs = tuple(p.rstrip(os.sep) + os.sep for p in unseen)
        self.empty: dict[str, list[int]] = {p.rstrip(os.sep) + os.sep: [] for p in empty}
        self.empty_dirs = tuple(self.empty)

    def __call__(self, path: str, row_id: int) -> bool:
        if self.unseen(path):
            return True
        if not path.startswith(self.empty_dirs):
            return False
        for folder, ids in self.empty.items():
            if path.startswith(folder):
                ids.append(row_id)
        return True

    def unseen(self, path: str) -> bool:
        """Whether the path, or a folder above it, could not be looked at."""
        return path in self.unseen_paths or path.startswith(self.unseen_dirs)


def _rows_under(home: Home, roots: Sequence[Root]) -> dict[str, tuple[int, int, int, str]]:
    conds: list[ColumnElement[bool]] = []
    for root in roots:
        # The root itself and everything under it, whatever it is now: a folder's row as a
        # file, or rows inside what is now a file, are pruned like any other.
        prefix = root.path.rstrip(os.sep) + os.sep
        # A range on the unique path index: every path that starts with the prefix.
        upper = prefix[:-1] + chr(ord(os.sep) + 1)
        conds.append((Image.path == root.path) | ((Image.path >= prefix) & (Image.path < upper)))
    if not conds:
        return {}
    stmt = select(Image.path, Image.id, Image.size, Image.mtime_ns, Image.content_hash).where(
        or_(*conds)
    )
    with home.engine.connect() as conn:
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in conn.execute(stmt)}


def read(
    job: Job, embedded: Container[str], preprocess: Preprocess, max_pixels: int
) -> Prepared | Failure:
    """The read stage: hash the file, and decode and prepare it unless its content is known
    (`preprocess`: the model's input size and resizing; Ray workers call this too).

    Whatever goes wrong with one file is that file's `Failure`: it never stops the run.
    """
    try:
        data = read_file(job.entry.path, max_file_bytes(max_pixels))
        digest = content_hash(data)
        if digest in embedded:
            return Prepared(job, digest)
        size = preprocess.size
        img, meta = decode(data, max_pixels=max_pixels, min_side=size * DRAFT_OVERSAMPLE)
        return Prepared(job, digest, meta, prepare_pixels(img, preprocess))
    except UnreadableImage as exc:
        return Failure(job.entry.path, str(exc))
    except MemoryError:
        return Failure(job.entry.path, "image too large: not enough memory to read it")
    except Exception as exc:  # a decoder's bug on one odd file must not end the run
        log.debug("reading %r failed", job.entry.path, exc_info=True)
        return Failure(job.entry.path, f"cannot read image: {type(exc).__name__}: {exc}"[:200])


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
