"""Keeping the index current: file events (watchdog) start debounced incremental runs.

Every run is an ordinary `Indexer.run` over the watched folders that had events: the same
scan, moves, deletions, lock and crash safety as `pixsearch index FOLDER`, reading only the
files that are new or changed.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.debounce import Debouncer
from indexer.encoder import ClipEncoder
from indexer.errors import HomeBusy, InvalidInput, PixsearchError
from indexer.home import Home
from indexer.imageio import IMAGE_EXTENSIONS
from indexer.pipeline import Indexer
from indexer.types import IndexReport

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent
    from watchdog.observers.api import BaseObserver

log = logging.getLogger(__name__)

#: Seconds between checks that each watched folder is still there (and is the same folder).
HEALTH_SECONDS = 2.0
#: Seconds before a failed run (a busy home, a full disk) is tried again.
RETRY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class WatchRun:
    """One indexing run of the watcher: why, over which folders, and what it did."""

    why: str  # "start", "events", "back", "rescan"
    roots: tuple[str, ...]
    report: IndexReport


def summary(report: IndexReport) -> str | None:
    """One line for a run that changed something ("watch: +12 new, 3 moved in 2.1 s")."""
    parts = [
        text
        for count, text in (
            (report.added, f"+{report.added} new"),
            (report.updated, f"{report.updated} changed"),
            (report.moved, f"{report.moved} moved"),
            (report.removed, f"{report.removed} removed"),
            (len(report.failed), f"{len(report.failed)} failed"),
        )
        if count
    ]
    if not parts:
        return None
    return f"watch: {', '.join(parts)} in {report.seconds:.1f} s"


class Relevance:
    """Which file events can change the index: those the indexer would not ignore."""

    def __init__(self, root: str, home: Path, include_hidden: bool) -> None:
        self.root = root
        homes = {os.path.abspath(home), os.path.realpath(home)}
        self.homes = tuple(homes)
        self.home_prefixes = tuple(h.rstrip(os.sep) + os.sep for h in homes)
        self.include_hidden = include_hidden

    def __call__(self, event: FileSystemEvent) -> bool:
        if event.event_type not in ("created", "modified", "closed", "deleted", "moved"):
            return False
        if event.is_directory and event.event_type in ("modified", "closed"):
            return False  # a folder "modified" echoes the events of the files in it
        paths = [os.fsdecode(event.src_path)]
        if event.event_type == "moved":
            paths.append(os.fsdecode(event.dest_path))
        return any(self.counts(p, event.is_directory) for p in paths if p)

    def counts(self, path: str, is_dir: bool) -> bool:
        """Whether a file (or a folder, with whatever is in it) at `path` may be indexed."""
        if path in self.homes or path.startswith(self.home_prefixes):
            return False  # the home's own files (thumbnails are JPEGs)
        rel = os.path.relpath(path, self.root)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return False
        if not self.include_hidden and any(
            part.startswith(".") and part != os.curdir for part in rel.split(os.sep)
        ):
            return False
        return is_dir or os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


class _Stopped(Exception):
    """Raised between batches of a run when the watcher is told to stop."""


class _StopCheck:
    """A progress sink that ends a run at the next batch once `stop` is set (a run in a
    server's thread cannot be interrupted like the command line's, by Ctrl-C)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def start(self, total: int) -> None:
        """Nothing to show."""

    def advance(self, n: int) -> None:
        """Stop here if asked to: the batch just written is committed."""
        if self.stop.is_set():
            raise _Stopped


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the folder at `path`; None if there is no folder there now."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


class _Folder:
    """One watched folder and the observer that watches it."""

    def __init__(self, path: str, on_event: Callable[[FileSystemEvent], None]) -> None:
        self.path = path
        self.on_event = on_event
        self.identity: tuple[int, int] | None = None
        self.observer: BaseObserver | None = None
        self.mode = ""
        self.start_error: str | None = None

    def start(self, polling: bool, interval: float) -> None:
        """Watch with file-system events, or by polling if asked to or if events fail."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        folder = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                folder.on_event(event)

        self.identity = _identity(self.path)
        attempts: list[tuple[str, Callable[[], BaseObserver]]] = [
            ("polling", lambda: PollingObserver(timeout=interval))
        ]
        if not polling:
            attempts.insert(0, ("file events", Observer))
        for mode, make in attempts:
            observer = make()
            observer.schedule(Handler(), self.path, recursive=True)
            try:
                observer.start()
            except OSError as exc:
                # inotify's watch or instance limit (one watch per folder), or a file
                # system without events: polling still works.
                why = exc.strerror or str(exc)
                if mode == "file events":
                    log.warning(
                        "%s: no file events (%s): polling every %g s", self.path, why, interval
                    )
                    continue
                raise InvalidInput(f"cannot watch {self.path}: {why}") from None
            self.observer, self.mode = observer, mode
            return

    def alive(self) -> bool:
        """Whether the observer and its emitters are still running (an inotify watch ends
        when its folder is deleted)."""
        obs = self.observer
        return obs is not None and obs.is_alive() and all(e.is_alive() for e in obs.emitters)

    def stop(self) -> None:
        """Stop watching this folder."""
        obs, self.observer = self.observer, None
        if obs is not None:
            obs.stop()
            if obs.is_alive():
                obs.join(10)


def _watched_folders(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Absolute folder paths, without the ones inside another; an error for anything else."""
    folders: list[str] = []
    for p in paths:
        path = os.path.abspath(os.path.expanduser(os.fspath(p)))
        if not os.path.exists(path):
            raise InvalidInput(f"{p}: no such folder")
        if not os.path.isdir(path):
            raise InvalidInput(f"{p}: not a folder (watch takes folders)")
        folders.append(path)
    folders = sorted(set(folders))
    return [
        f
        for f in folders
        if not any(f != o and f.startswith(o.rstrip(os.sep) + os.sep) for o in folders)
    ]


class Watcher:
    """Watches folders and keeps a home's index of them current until stopped."""

    def __init__(
        self,
        home: Home,
        encoder: ClipEncoder,
        paths: Sequence[str | os.PathLike[str]],
        *,
        on_run: Callable[[WatchRun], None] | None = None,
        on_ready: Callable[[Watcher], None] | None = None,
    ) -> None:
        self.home = home
        self.encoder = encoder
        self.settings = home.settings
        self.on_run = on_run
        self.on_ready = on_ready
        self.runs = 0
        self._cond = threading.Condition()
        self._debouncer = Debouncer(self.settings.watch_quiet, self.settings.watch_max_delay)
        self._stopping = threading.Event()
        # Photos that file events said were deleted or moved away, per folder, for the next
        # run (a folder those leave empty is not an unmounted drive).
        self._gone: dict[str, set[str]] = {}
        self.folders = [
            _Folder(path, self._event_handler(path)) for path in _watched_folders(paths)
        ]
        if not self.folders:
            raise InvalidInput("name at least one folder to watch")

    @property
    def modes(self) -> dict[str, str]:
        """How each folder is watched: "file events" or "polling" ("" while it is gone)."""
        return {f.path: f.mode if f.observer is not None else "" for f in self.folders}

    def _event_handler(self, path: str) -> Callable[[FileSystemEvent], None]:
        relevant = Relevance(path, self.home.path, self.settings.include_hidden)

        def handle(event: FileSystemEvent) -> None:
            if not relevant(event):
                return
            gone = None
            # Polling reports an unmounted drive's files as deleted; inotify does not.
            by_events = self.modes.get(path) == "file events"
            if by_events and event.event_type in ("deleted", "moved") and not event.is_directory:
                gone = os.fsdecode(event.src_path)
            with self._cond:
                if gone is not None:
                    self._gone.setdefault(path, set()).add(gone)
                if self._debouncer.add([path], time.monotonic()):
                    self._cond.notify_all()  # the loop was idle: it must start counting

        return handle

    def stop(self) -> None:
        """Ask `run` to return: now if it waits, after the current batch if it indexes."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    def run(self) -> None:
        """Catch up, then index what the file events say until `stop` (or Ctrl-C)."""
        self.home.check_writable()
        self.encoder.load()  # a missing model fails now, not at the first new photo
        try:
            # Watching starts before the catch-up run: what changes during it is seen.
            for folder in self.folders:
                folder.start(self.settings.watch_polling, self.settings.watch_poll_interval)
            self._index([f.path for f in self.folders], "start", fatal=True)
            if self.on_ready is not None and not self._stopping.is_set():
                self.on_ready(self)
            self._loop()
        finally:
            for folder in self.folders:
                folder.stop()

    def _loop(self) -> None:
        rescan = self.settings.watch_rescan
        next_rescan = time.monotonic() + rescan if rescan else float("inf")
        while not self._stopping.is_set():
            with self._cond:
                due = self._debouncer.due_in(time.monotonic())
                wait = min(HEALTH_SECONDS, max(0.0, next_rescan - time.monotonic()))
                if due is None or due > 0:
                    self._cond.wait(wait if due is None else min(due, wait))
            if self._stopping.is_set():
                return
            self._check_folders()
            now = time.monotonic()
            if now >= next_rescan:
                next_rescan = now + rescan
                with self._cond:
                    self._debouncer.take()
                self._index([f.path for f in self.folders], "rescan")
                continue
            with self._cond:
                due = self._debouncer.due_in(now)
                keys = self._debouncer.take() if due == 0 else set()
            if keys:
                self._index(sorted(keys), "events")

    def _check_folders(self) -> None:
        """A folder that went away (unmounted, renamed) keeps its photos and is watched for;
        one that came back, or was replaced (a drive mounted over it), is caught up."""
        for folder in self.folders:
            now = _identity(folder.path)
            if now == folder.identity and (now is None or folder.alive()):
                continue
            folder.stop()
            if now is None:
                log.warning(
                    "%s is gone (unmounted?): its photos stay indexed; watching for it to "
                    "come back",
                    folder.path,
                )
                folder.identity = None
                continue
            try:
                folder.start(self.settings.watch_polling, self.settings.watch_poll_interval)
            except PixsearchError as exc:
                if folder.start_error != str(exc):
                    log.warning("%s; trying again", exc)
                folder.start_error = str(exc)
                folder.identity = None
                continue
            folder.start_error = None
            log.warning("watching %s again: catching up", folder.path)
            self._index([folder.path], "back")

    def _index(self, roots: list[str], why: str, *, fatal: bool = False) -> None:
        present = [r for r in roots if _identity(r) is not None]
        if not present:
            return  # a folder that is gone is caught up when it is back
        progress = _StopCheck(self._stopping)
        with self._cond:
            gone = {root: self._gone.pop(root, set()) for root in present}
        try:
            report = Indexer(self.home, self.encoder, progress=progress).run(
                present, gone=set().union(*gone.values())
            )
        except _Stopped:
            self._retry(present, gone, delay=0.0)
            return
        except HomeBusy as exc:
            log.warning("%s; trying again in %g s", exc, RETRY_SECONDS)
            self._retry(present, gone)
            return
        except Exception as exc:
            if fatal:
                raise
            # One bad run (a full disk, a database error) must not end the watching.
            said = str(exc) if isinstance(exc, PixsearchError) else f"{type(exc).__name__}: {exc}"
            log.error("watch: indexing failed: %s; trying again in %g s", said, RETRY_SECONDS)
            log.debug("the failed run", exc_info=True)
            self._retry(present, gone)
            return
        self.runs += 1
        log.info("%s (%s)", summary(report) or "watch: nothing changed", why)
        if self.on_run is not None:
            self.on_run(WatchRun(why, tuple(present), report))

    def _retry(
        self, roots: list[str], gone: dict[str, set[str]], delay: float = RETRY_SECONDS
    ) -> None:
        with self._cond:
            for root, paths in gone.items():
                self._gone.setdefault(root, set()).update(paths)
            self._debouncer.defer(roots, time.monotonic(), delay)
