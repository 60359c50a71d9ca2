"""What an indexing run does around its work: the home's lock, and the leftovers of a kill."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from indexer.errors import HomeBusy
from indexer.home import Home

log = logging.getLogger(__name__)


@contextmanager
def home_lock(home: Home, roots: Sequence[str] = ()) -> Iterator[None]:
    """Hold the indexing lock of a run over `roots`: on SQLite the home's (one indexing run
    per home at a time); on PostgreSQL one per indexed folder (`indexer.postgres`), so runs
    over separate folders, on one machine or several, write the database at once."""
    if home.dialect == "postgresql":
        from indexer.postgres import library_locks

        with library_locks(home.engine, roots):
            # Made only once the database answers: a wrong URL leaves nothing behind.
            home.path.mkdir(parents=True, exist_ok=True)
            yield
        return
    with _file_lock(home):
        yield


@contextmanager
def _file_lock(home: Home) -> Iterator[None]:
    import fcntl

    home.path.mkdir(parents=True, exist_ok=True)
    with open(home.path / "index.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HomeBusy(
                f"another indexing run is using {home.path}; wait for it to end"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale_temp_files(*folders: Path, min_age: float = 0.0) -> int:
    """Delete the temporary files of atomic writes (`.NAME.PID[.THREAD].tmp`) whose process is
    gone: what a kill -9 during a save leaves. A live process's file is left alone, and so is
    a file younger than `min_age` seconds (a home shared by several machines: the process id
    may be another machine's)."""
    removed = 0
    now = time.time()
    for folder in folders:
        try:
            names = [p for p in folder.iterdir() if p.name.startswith(".")]
        except OSError:
            continue
        for path in names:
            parts = path.name.removesuffix(".tmp").split(".")
            if not path.name.endswith(".tmp") or len(parts) < 3 or not parts[-1].isdigit():
                continue
            pid = int(parts[-2] if parts[-2].isdigit() else parts[-1])
            if pid <= 0 or _alive(pid):
                continue
            try:
                if min_age and now - path.stat().st_mtime < min_age:
                    continue
            except OSError:
                continue
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
