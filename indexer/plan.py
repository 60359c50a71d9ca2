"""The plan stage of an indexing run: compare the scanned files with the rows under the
roots, and decide what must be read, re-embedded, moved or deleted (nothing is written)."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, or_, select

from indexer.db import Image
from indexer.scan import EmptyFolder, Root, under
from indexer.types import Failure, FileEntry, Job

if TYPE_CHECKING:
    from indexer.home import Home

log = logging.getLogger(__name__)


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
