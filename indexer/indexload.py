"""Loading a home's FAISS index (the saved file if it is intact and current, else rebuilt
from the stored embeddings) and rebuilding it, in the background or in place."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.vectors import Ids, VectorIndex, Vectors

if TYPE_CHECKING:
    from indexer.home import Home

log = logging.getLogger(__name__)

#: Index files being rebuilt in the background by this process.
_rebuilds: set[Path] = set()
_rebuilds_lock = threading.Lock()


def load_index(
    home: Home, key: str, model_id: int, dim: int, *, background: bool = True, rebuild: str = ""
) -> VectorIndex:
    """The model's FAISS index: the saved one if it is intact and matches the database,
    else rebuilt (and saved); `rebuild`: why not to use the saved one at all.

    A saved index that matches but no longer suits the collection's size (see
    `VectorIndex.wants_rebuild`) is returned as it is and rebuilt into a better-suited
    kind, in a background thread unless `background` is False.
    """
    from indexer.derived import build_source

    path = home.index_path(key)
    generation = home.generation(model_id)
    policy = home.policy
    index, why = (
        (None, rebuild) if rebuild else VectorIndex.open(path, dim, generation, None, policy)
    )
    if index is not None and index.kind.startswith("OnDisk"):
        # The generation stamp already says the file holds the database's state; the count
        # guards against a database changed behind pixsearch's back. At 10M photos it is a
        # join over two 0.5 GB indexes (minutes on a cold disk before the first query), so
        # an on-disk index answers at once and is counted in the background.
        _count_in_background(home, index, key, model_id, dim, generation)
    elif index is not None:
        held, count = len(index), home.count_vectors(model_id)
        if held != count:
            index, why = None, f"holds {held} vectors, expected {count}"
    if index is not None:
        reason = index.wants_rebuild()
        if reason is not None:
            rebuild_index(home, index, key, model_id, dim, reason, background=background)
        return index
    ids, vecs = build_source(home, key, model_id, dim, policy)
    index = VectorIndex.build(dim, ids, vecs, policy, place=path)
    if path.exists() or len(ids):
        log.warning(
            "FAISS index %s is %s; rebuilt it from %d stored embeddings", path.name, why, len(ids)
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # a server's database: maybe new
        index.save(path, generation)
    except OSError as exc:  # a read-only home still answers queries
        log.warning("cannot save rebuilt index %s: %s", path, exc)
    return index


def _count_in_background(
    home: Home, index: VectorIndex, key: str, model_id: int, dim: int, generation: int
) -> None:
    """Compare the index's vector count with the database's in a background thread; rebuild
    (in the background too) if they differ while the database stayed at `generation`."""
    held = len(index)

    def check() -> None:
        try:
            count = home.count_vectors(model_id)
            # A write meanwhile moves the generation on and the searcher reloads anyway.
            if count != held and home.generation(model_id) == generation:
                why = f"it holds {held} vectors but the database {count}"
                rebuild_index(home, index, key, model_id, dim, why)
        except Exception:  # the index keeps answering; the next load counts again
            log.exception("counting the stored vectors failed")

    threading.Thread(target=check, daemon=True, name="pixsearch-count").start()


def rebuild_index(
    home: Home,
    index: VectorIndex,
    key: str,
    model_id: int,
    dim: int,
    reason: str,
    *,
    background: bool = True,
) -> None:
    """Rebuild `index` in place from the stored embeddings, then save it atomically.

    In the background, searches keep using the old structure until the new one is
    swapped in; the file is saved only if the database did not change meanwhile (a
    later load then finds it valid). One rebuild per index file at a time per process.
    """
    path = home.index_path(key)
    with _rebuilds_lock:
        if path in _rebuilds:
            return
        _rebuilds.add(path)
    snapshot: dict[str, int] = {}
    policy = home.policy

    def load() -> tuple[Ids, Vectors]:
        from indexer.derived import build_source

        before = home.generation(model_id)
        ids, vecs = build_source(home, key, model_id, dim, policy)
        snapshot["generation"] = before if home.generation(model_id) == before else -1
        return ids, vecs

    def done(rebuilt: VectorIndex, clean: bool) -> None:
        generation = snapshot.get("generation", -1)
        if clean and generation >= 0 and generation == home.generation(model_id):
            try:
                rebuilt.save(path, generation)
            except OSError as exc:
                log.warning("cannot save rebuilt index %s: %s", path, exc)

    def release() -> None:
        with _rebuilds_lock:
            _rebuilds.discard(path)

    log.info(
        "FAISS index %s (%s): %s; rebuilding it%s",
        path.name,
        index.kind,
        reason,
        " in the background" if background else "",
    )
    if background:
        if index.rebuild_async(load, done, on_exit=release) is None:
            release()
        return
    try:
        ids, vecs = load()
        index.replace_with(VectorIndex.build(dim, ids, vecs, policy, place=path))
        done(index, True)
    finally:
        release()
