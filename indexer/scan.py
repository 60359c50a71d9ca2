"""Finding image files: recursive, loop-safe, hidden folders skipped unless asked for."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from indexer.imageio import IMAGE_EXTENSIONS
from indexer.types import Failure, FileEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Root:
    """A path the user asked to index, normalised; `is_dir` tells how to prune under it."""

    path: str
    is_dir: bool
    exists: bool


@dataclass(frozen=True, slots=True)
class EmptyFolder:
    """A folder that lists nothing at all: as likely an unmounted drive's mount point as a
    folder whose photos were all deleted, so what was indexed under it stays."""

    path: str


def normalise_roots(paths: Sequence[str | os.PathLike[str]]) -> list[Root]:
    """Absolute, normalised roots (symbolic links in the root itself are kept as named)."""
    roots = []
    for p in paths:
        path = os.path.abspath(os.path.expanduser(os.fspath(p)))
        roots.append(Root(path, os.path.isdir(path), os.path.exists(path)))
    return roots


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def scan(
    roots: Sequence[Root], include_hidden: bool = False
) -> Iterator[FileEntry | Failure | EmptyFolder]:
    """Yield every image file under the roots, a `Failure` for what cannot be looked at, and
    an `EmptyFolder` for each folder with nothing in it."""
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for root in roots:
        if not root.exists:
            if os.path.islink(root.path):
                yield Failure(root.path, "dangling symbolic link")
            else:
                yield Failure(root.path, "no such file or directory")
            continue
        if root.is_dir:
            yield from _walk(root.path, include_hidden, seen_dirs, seen_files)
        elif root.path not in seen_files:
            seen_files.add(root.path)
            yield _entry(root.path)


def _entry(path: str) -> FileEntry | Failure:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Failure(path, "dangling symbolic link" if os.path.islink(path) else "file vanished")
    except OSError as exc:  # it may well be there: not seen to be gone
        return Failure(path, f"cannot stat: {exc.strerror or exc}", keep=True)
    if not stat.S_ISREG(st.st_mode):
        return Failure(path, "not a regular file")
    return FileEntry(path, st.st_size, st.st_mtime_ns)


def _walk(
    top: str, include_hidden: bool, seen_dirs: set[tuple[int, int]], seen_files: set[str]
) -> Iterator[FileEntry | Failure | EmptyFolder]:
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as exc:
            gone = isinstance(exc, FileNotFoundError)
            yield Failure(folder, f"cannot open folder: {exc.strerror or exc}", keep=not gone)
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:  # a symbolic-link loop, or a folder reached twice
            continue
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                items = sorted(it, key=lambda e: e.name)
        except FileNotFoundError as exc:  # deleted since it was seen
            yield Failure(folder, f"cannot list folder: {exc.strerror or exc}")
            continue
        except OSError as exc:  # no permission, an I/O error: its contents are unknown
            yield Failure(folder, f"cannot list folder: {exc.strerror or exc}", keep=True)
            continue
        if not items:
            yield EmptyFolder(folder)
            continue
        subdirs = []
        for item in items:
            if not include_hidden and _is_hidden(item.name):
                continue
            try:
                is_dir = item.is_dir()  # follows symbolic links
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(item.path)
                continue
            if os.path.splitext(item.name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            if item.path in seen_files:
                continue
            seen_files.add(item.path)
            yield _entry(item.path)
        stack.extend(reversed(subdirs))


def under(root: Root, path: str) -> bool:
    """Whether `path` is inside (or is) the root, whatever the root is now: a row for a root
    folder that was a file, or inside a root file that was a folder, is under it too."""
    prefix = root.path if root.path.endswith(os.sep) else root.path + os.sep
    return path == root.path or path.startswith(prefix)
