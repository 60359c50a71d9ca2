"""Paths as people read them: file names are bytes and may hold anything but NUL and '/'."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def printable(path: str) -> str:
    """Valid UTF-8 text for any path: bytes that are not UTF-8 (kept by `os.fsdecode` as
    lone surrogates, which no UTF-8 output accepts) are shown as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def one_line(path: str) -> str:
    """`printable`, with control characters (a newline in a file name) escaped too: for
    tables and messages, one line per item."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in printable(path)
    )
