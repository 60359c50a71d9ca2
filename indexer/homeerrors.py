"""Disk and database failures a user can act on, told as one-line `HomeError`s."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from indexer.errors import HomeError

log = logging.getLogger(__name__)

#: errno values that mean "no space left" (a full disk, or a user's quota).
FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(where: Path) -> HomeError:
    """The error for a full disk under `where`."""
    return HomeError(f"the disk holding {where} is full; free some space and run it again")


def read_only(home: Path) -> HomeError:
    """The error for writing into a home that cannot be written."""
    return HomeError(f"the data folder {home} is read-only (searching works, indexing does not)")


def from_os_error(exc: OSError, home: Path) -> HomeError | None:
    """A HomeError for a full disk or a read-only file system, else None."""
    where = Path(exc.filename).parent if isinstance(exc.filename, str) else home
    if exc.errno in FULL:
        return disk_full(where)
    if exc.errno == errno.EROFS:
        return read_only(home)
    return None


def from_sqlite_error(exc: BaseException, db_path: Path, home: Path) -> HomeError | None:
    """A HomeError for SQLite's full-disk, damage, read-only and I/O errors, else None.

    The message holds SQLite's own reason, never the statement or its parameters.
    """
    orig = getattr(exc, "orig", None) or exc
    reason = " ".join(str(orig).split())[:120]
    text = reason.lower()
    if "database or disk is full" in text:
        return disk_full(db_path.parent)
    if "malformed" in text or "not a database" in text:
        return HomeError(
            f"the database {db_path} is damaged ({reason}); restore it from a backup, or move "
            "it away and index again"
        )
    if "readonly database" in text or "read-only" in text:
        return read_only(home)
    if "disk i/o error" in text:
        # SQLite reports a write that ran out of space in its WAL as an I/O error.
        if _nearly_full(db_path.parent):
            return disk_full(db_path.parent)
        return HomeError(f"cannot read or write the database {db_path} ({reason})")
    return None


def _nearly_full(folder: Path) -> bool:
    """Whether the file system holding `folder` has (almost) no space left."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < NEARLY_FULL


#: Free bytes under which a failed write is put down to a full disk.
NEARLY_FULL = 1 << 20
