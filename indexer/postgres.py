"""PostgreSQL specifics: its errors as one-line HomeErrors, and the per-library indexing locks.

Several indexing runs, on one machine or many, may write one PostgreSQL database at once,
each over its own folders. A run holds, for the length of the run, a session-level advisory
lock per folder it indexes (exclusive) and per folder above it (shared): two runs over the
same folder, or over a folder and a folder inside it, exclude each other; runs over separate
folders do not. The server drops a session's locks when its connection ends, so a killed run
(or a machine gone) leaves no lock behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from indexer.errors import HomeError

log = logging.getLogger(__name__)

#: SQLSTATE classes about reaching the database at all: connection exceptions, the server
#: shutting down, bad credentials, a database that does not exist.
_CONNECTION_STATES = ("08", "57P", "28", "3D000")
_PREFIXES = re.compile(
    r"^(connection failed: )?(connection to server (at|on) .*? failed: )?(FATAL: +)?", re.I
)


def public_url(url: str) -> str:
    """The URL as it may be shown: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing in it to hide that we could find
        return url.split("@")[-1]


def reason_of(exc: BaseException) -> str:
    """The driver's reason, on one line, without the boilerplate around it."""
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return _PREFIXES.sub("", first).strip()


def is_connection_error(exc: BaseException) -> bool:
    """Whether a driver error is about reaching the database (not about one statement)."""
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None)
    if state is None:  # psycopg gives none for errors before any server answer
        return type(orig).__name__ == "OperationalError"
    return str(state).startswith(_CONNECTION_STATES)


def connection_error(exc: BaseException, url: str) -> HomeError:
    """The one-line error for a database that cannot be reached or used."""
    return HomeError(f"cannot use the database {public_url(url)}: {reason_of(exc)}")


# -- per-library advisory locks ---------------------------------------------------------------
def lock_key(path: str) -> int:
    """The advisory lock key (signed 64 bits) of a folder."""
    digest = hashlib.blake2b(os.fsencode(path), digest_size=8, person=b"pixsearch").digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_plan(roots: Sequence[str]) -> list[tuple[str, bool]]:
    """(folder, exclusive) per lock a run over `roots` takes, in one global order (by key), so
    that two runs never wait on each other in a cycle; a folder both indexed and above another
    indexed one is locked exclusively."""
    wanted: dict[str, bool] = {}
    for root in roots:
        path = os.path.normpath(root)
        wanted[path] = True
        parent = os.path.dirname(path)
        while parent and parent not in wanted:
            wanted[parent] = False
            if parent == os.path.dirname(parent):
                break
            parent = os.path.dirname(parent)
    return sorted(wanted.items(), key=lambda item: lock_key(item[0]))


@contextmanager
def library_locks(engine: Engine, roots: Sequence[str]) -> Iterator[None]:
    """Hold the advisory locks of a run over `roots` (see the module's docstring), or raise a
    HomeError naming the folder another run holds."""
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        for path, exclusive in lock_plan(roots):
            fn = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
            if not conn.execute(text(f"SELECT {fn}(:k)"), {"k": lock_key(path)}).scalar():
                where = f"{path} or a folder in it" if exclusive else path
                raise HomeError(
                    f"another indexing run is indexing {where} in this database; "
                    "wait for it to end"
                )
        yield
    finally:
        try:
            conn.execute(text("SELECT pg_advisory_unlock_all()"))
        except Exception:  # the connection is gone, and its locks with it
            log.debug("releasing the indexing locks failed", exc_info=True)
        conn.close()
