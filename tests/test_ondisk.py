"""The on-disk IVF-PQ kind and the memory-mapped vector file (issue 12), on a small synthetic
collection with the size thresholds lowered through the settings, as a user could."""

from __future__ import annotations

import errno
import logging
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer import ondisk, ondisk_build, vecstore
from indexer.encoder import get_encoder, model_key
from indexer.home import Home
from indexer.settings import Settings
from indexer.vecstore import DATA_OFFSET
from indexer.vectors import VectorIndex, exact_search, rescore
from search.engine import Searcher
from search.query import Filters, Query
from tests.fakes import synthetic_home

N = 4000
DIM = 32  # the tiny model's


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, DIM))
    x = centres[rng.integers(0, 60, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _settings(root: Path, tiny_model: tuple[Path, Path]) -> Settings:
    config, checkpoint = tiny_model
    return Settings(
        home=root,
        model=str(config),
        pretrained=str(checkpoint),
        captioner="none",
        index_exact_limit=500,
        index_pq_limit=1000,
        index_ondisk_limit=2000,
        vector_file_min=0,
    )


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Path]) -> Settings:
    """A home of 4,000 photos whose settings make that 'very large': an on-disk index."""
    root = tmp_path_factory.mktemp("ondisk")
    settings = _settings(root / "home", tiny_model)
    synthetic_home(settings, _key(settings), _clustered(N, 0), root / "photos")
    return settings


def _key(settings: Settings) -> str:
    return model_key(settings.model, settings.pretrained)


def _load(settings: Settings) -> tuple[Home, VectorIndex, int]:
    home = Home(settings)
    model = home.model_row(_key(settings))
    assert model is not None
    return home, home.load_index(model.name, model.id, model.dim), model.id


def _recall(index: VectorIndex, home: Home, model_id: int, qs: np.ndarray) -> float:
    ids, vecs = home.stored_vectors(model_id, DIM)
    _, truth = exact_search(vecs, qs, 10)
    _, cand = index.search(qs, index.candidates(10))
    hits = 0
    for q, c, t in zip(qs, cand, truth, strict=True):
        found, rows = home.stored_vectors(model_id, DIM, c[c >= 0])
        _, top = rescore(q, found, rows, 10)
        hits += len(set(top.tolist()) & set(ids[t].tolist()))
    return hits / (10 * len(qs))


def test_a_very_large_collection_gets_a_memory_mapped_on_disk_index(big: Settings) -> None:
    home, index, model_id = _load(big)
    assert index.kind.startswith("OnDisk,OPQ4,IVF") and index.kind.endswith(",PQ4")
    assert index.nprobe > 0 and len(index) == N
    bases = list(home.path.glob("index-*.ondisk-*"))
    assert len(bases) == 1 and (bases[0] / ondisk.LISTS_FILE).stat().st_size > 0
    # The codes are of rotated vectors; the rotation keeps inner products.
    rotation = np.load(bases[0] / ondisk.ROTATION_FILE)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(DIM), atol=1e-4)
    assert _recall(index, home, model_id, _clustered(100, 9)) >= 0.95

    # A new process (here: a new Home) opens the saved files instead of building again, and
    # maps the lists file instead of reading it.
    again, reopened, _ = _load(big)
    assert reopened.kind == index.kind and reopened.nprobe == index.nprobe
    assert again.path.glob("index-*.ondisk-*").__next__() == bases[0]
    maps = Path("/proc/self/maps").read_text()
    assert str(bases[0] / ondisk.LISTS_FILE) in maps
    q = _clustered(5, 3)
    assert np.array_equal(reopened.search(q, 20)[1], index.search(q, 20)[1])


def test_new_and_removed_photos_go_in_without_a_rebuild(big: Settings) -> None:
    home, index, model_id = _load(big)
    base = index.index.folder
    fresh = _clustered(3, 42)
    index.add(np.array([N + 1, N + 2, N + 3]), fresh)  # new photos
    index.add(np.array([5]), fresh[:1] * -1)  # photo 5 re-embedded: its old vector goes
    index.remove(np.array([7]))  # photo 7 deleted
    path = home.index_path(_key(big))
    index.save(path, 99)
    opened, why = VectorIndex.open(path, DIM, 99, N + 2, home.policy)
    assert opened is not None, why
    assert opened.index.folder == base  # the same base: no rebuild
    for i, vec in enumerate(fresh):
        assert N + 1 + i in opened.search(vec[None], 10)[1][0]
    old = home.stored_vectors(model_id, DIM, np.array([5, 7]))[1]
    assert 5 not in opened.search(old[:1], 50)[1][0]
    assert 7 not in opened.search(old[1:], 50)[1][0]
    assert 5 in opened.search(-fresh[:1], 5)[1][0]
    # The saved index went back to the database's generation for the other tests.
    index.remove(np.array([N + 1, N + 2, N + 3, 5]))
    index.add(np.array([5, 7]), old)
    index.save(path, home.generation(model_id))


def test_filtered_searches_keep_to_the_filter_and_fill_the_page(big: Settings) -> None:
    home, index, model_id = _load(big)
    allowed = np.arange(3000, 3300, dtype=np.int64)
    q = _clustered(1, 5)
    _, ids = index.search_subset(q, 40, allowed)
    assert len(ids[0]) == 40 and set(ids[0].tolist()) <= set(allowed.tolist())

    searcher = Searcher(home, get_encoder(big))
    # synthetic_home dates image i (id i + 1) 2020-01-01 plus i days.
    window = Filters(
        taken_after=date(2020, 1, 1) + timedelta(days=100), taken_before=date(2020, 4, 30)
    )
    got = searcher.search(Query(image_vector=q[0], k=20, cutoff=False, filters=window))
    ids_in = {h.id for h in got.hits}
    assert len(ids_in) == 20 and all(101 <= i <= 121 for i in ids_in)  # days 100 to 120
    vecs = home.stored_vectors(model_id, DIM, np.arange(101, 122))[1]
    best = np.sort(vecs @ q[0])[::-1][:20]
    assert np.allclose([h.score for h in got.hits], best, atol=2e-3)  # exact (float16) scores


def test_a_truncated_or_stale_vector_file_is_rebuilt_with_a_warning(
    big: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    home, _, model_id = _load(big)
    key = _key(big)
    path = home.vectors_path(key)
    store = home.vector_store(key, model_id, DIM)
    assert store is not None and path.stat().st_size >= DATA_OFFSET + N * DIM * 2
    ids, vecs = home.stored_vectors(model_id, DIM)
    found, rows = store.get(ids)
    assert np.array_equal(found, ids) and np.abs(rows - vecs).max() < 1e-3
    for damage in ("truncate", "stale"):
        if damage == "truncate":
            with open(path, "r+b") as fh:
                fh.truncate(DATA_OFFSET + 100)
        else:
            store.stamp(home.generation(model_id) - 1)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="indexer.derived"):
            again = home.vector_store(key, model_id, DIM)
        assert again is not None
        assert np.array_equal(again.get(ids)[0], ids)
        (warning,) = [r.getMessage() for r in caplog.records]
        assert ("truncated" if damage == "truncate" else "stale") in warning
        assert "rebuilt it from the database" in warning
        store = again


def test_a_disk_filling_during_a_build_keeps_the_previous_index(
    big: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    home, index, model_id = _load(big)
    key = _key(big)
    before = sorted(p.name for p in home.path.iterdir())

    def full(*_: object) -> None:
        raise RuntimeError("Error in faiss::FileIOWriter: No space left on device (errno 28)")

    monkeypatch.setattr(ondisk_build, "fill_shard", full)
    with pytest.raises(ondisk.DiskFull) as raised:
        home.load_index(key, model_id, DIM, rebuild="test")
    assert raised.value.errno == errno.ENOSPC
    assert "filled while the on-disk index was built; the previous index is kept" in str(
        raised.value
    )
    assert sorted(p.name for p in home.path.iterdir()) == before  # nothing left behind
    # In the background (a searcher's rebuild), one warning line; the old index answers.
    with caplog.at_level(logging.WARNING):
        home.rebuild_index(index, key, model_id, DIM, "test")
        index.wait_rebuild()
    assert [r.getMessage() for r in caplog.records if "previous index is kept" in r.getMessage()]
    assert index.kind.startswith("OnDisk") and len(index.search(_clustered(1, 1), 5)[1][0]) == 5
    assert _load(big)[1].index.folder == index.index.folder


def test_an_indexing_run_adds_to_the_on_disk_index_and_the_vector_file(
    big: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`pixsearch index` on a home with an on-disk index: the new photos go into its delta
    and the vector file, the base stays, and the saved files are current (no rebuild)."""
    from tests.helpers import make_photos, run_cli

    for field in ("home", "model", "pretrained", "captioner"):
        monkeypatch.setenv(f"PIXSEARCH_{field.upper()}", str(getattr(big, field)))
    for field in ("index_exact_limit", "index_pq_limit", "index_ondisk_limit", "vector_file_min"):
        monkeypatch.setenv(f"PIXSEARCH_{field.upper()}", str(getattr(big, field)))
    home, index, model_id = _load(big)
    base = index.index.folder
    make_photos(tmp_path / "new", 4)
    assert run_cli(capsys, "index", str(tmp_path / "new")).code == 0
    home, after, _ = _load(big)
    assert after.kind == index.kind and after.index.folder == base and len(after) == N + 4
    new = [home.image_by_path(str(p)) for p in sorted((tmp_path / "new").iterdir())]
    ids = np.array([r.id for r in new if r is not None])
    assert len(ids) == 4
    store = home.vector_store(_key(big), model_id, DIM)
    assert store is not None
    found, rows = store.get(ids)
    assert np.array_equal(found, ids)
    assert np.abs(rows - home.stored_vectors(model_id, DIM, ids)[1]).max() < 1e-3
    for i, row in zip(ids, rows, strict=True):
        assert i in after.search(row[None], 10)[1][0]


def test_a_base_built_before_opq_still_opens_and_searches(tmp_path: Path) -> None:
    vecs = _clustered(2000, 4)
    ids = np.arange(1, 2001, dtype=np.int64)
    place = tmp_path / "index-old.faiss"
    built = ondisk_build.build("OnDisk,IVF16,PQ4", DIM, ids, ondisk.ArrayRows(vecs), place)
    assert not (built.folder / ondisk.ROTATION_FILE).exists()
    index = VectorIndex(DIM, ondisk.open_base(built.folder), built=2000)
    assert index.kind == "OnDisk,IVF16,PQ4"
    index.index.nprobe = 16
    _, found = index.search(vecs[:5], index.candidates(1))
    assert all(i in row for i, row in zip(ids[:5], found, strict=True))
    index.add(np.array([3000]), -vecs[:1])  # into its delta, unrotated as the base
    assert 3000 in index.search(-vecs[:1], index.candidates(1))[1][0]


def test_the_vector_file_is_read_into_the_page_cache_once_not_at_every_reload(
    tmp_path: Path,
    tiny_model: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A searcher reloads its index after each indexing checkpoint; at 10M photos reading the
    10 GB vector file (and then the 1.5 GB of image rows) again each time would keep the disk
    busy for minutes."""
    import threading

    from tests.helpers import make_photos, run_cli

    settings = _settings(tmp_path / "home", tiny_model)
    synthetic_home(settings, _key(settings), _clustered(600, 3), tmp_path / "old")
    for field in ("home", "model", "pretrained", "captioner", "vector_file_min"):
        monkeypatch.setenv(f"PIXSEARCH_{field.upper()}", str(getattr(settings, field)))
    searcher = Searcher(Home(settings), get_encoder(settings))

    def prefetches() -> int:
        for thread in threading.enumerate():
            if thread.name == "pixsearch-prefetch":
                thread.join()
        messages = [r.getMessage() for r in caplog.records]
        vectors = sum("vectors-" in m and "read into the page cache" in m for m in messages)
        assert sum("image rows read ahead" in m for m in messages) == vectors  # right after
        return vectors

    caplog.set_level(logging.INFO, logger="indexer.vecstore")
    caplog.set_level(logging.INFO, logger="indexer.home")
    q = _clustered(1, 9)[0]
    assert len(searcher.search(Query(image_vector=q, k=5, cutoff=False)).hits) == 5
    assert prefetches() == 1
    make_photos(tmp_path / "new", 3)
    assert run_cli(capsys, "index", str(tmp_path / "new")).code == 0
    assert len(searcher.search(Query(image_vector=q, k=5, cutoff=False)).hits) == 5
    assert len(searcher.index()) == 603  # it reloaded: the new photos are in
    assert prefetches() == 1


def test_a_searcher_reads_the_on_disk_lists_ahead_of_the_vectors(
    big: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Every query scans some of the lists file: it is read first, then the vector file."""
    import threading

    caplog.set_level(logging.INFO, logger="indexer.vecstore")
    searcher = Searcher(Home(big), get_encoder(big))
    assert searcher.search(Query(image_vector=_clustered(1, 4)[0], k=5, cutoff=False)).hits
    for thread in threading.enumerate():
        if thread.name == "pixsearch-prefetch":
            thread.join()
    read = [r.getMessage().split()[0] for r in caplog.records if "page cache" in r.getMessage()]
    assert [name.split("-")[0] for name in read] == ["lists.ivfdata", "vectors"]


def test_an_on_disk_index_answers_at_once_and_is_counted_in_the_background(
    tmp_path: Path, tiny_model: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """At 10M photos counting the stored vectors took minutes before a fresh server's first
    query; the saved index's generation stamp is enough to answer. A database changed behind
    pixsearch's back (restored, or edited by another tool) is still caught: the count, taken
    in the background, differs and the index is rebuilt, also in the background."""
    import sqlite3
    import threading

    settings = _settings(tmp_path / "home", tiny_model)
    settings = settings.model_copy(
        update={"index_exact_limit": 300, "index_pq_limit": 600, "index_ondisk_limit": 900}
    )
    vecs = _clustered(1200, 5)
    synthetic_home(settings, _key(settings), vecs, tmp_path / "photos")
    home = Home(settings)
    model = home.model_row(_key(settings))
    assert model is not None
    assert home.load_index(model.name, model.id, DIM).kind.startswith("OnDisk")
    gone = [11, 12, 13]
    with sqlite3.connect(home.path / "pixsearch.db") as db:  # no generation bump
        db.execute(f"DELETE FROM images WHERE id IN ({','.join(map(str, gone))})")

    caplog.set_level(logging.INFO, logger="indexer.indexload")
    searcher = Searcher(Home(settings), get_encoder(settings))
    query = Query(image_vector=vecs[10], k=5, cutoff=False)
    # Until the rebuild, the deleted photos' places on the page stay empty.
    got = searcher.search(query)
    assert got.hits and not {h.id for h in got.hits} & set(gone)
    for name in ("pixsearch-count", "pixsearch-index-rebuild"):
        for thread in threading.enumerate():
            if thread.name == name:
                thread.join(timeout=120)
    assert any("holds 1200 vectors but the database 1197" in r.getMessage() for r in caplog.records)
    assert len(searcher.index()) == 1197
    got = searcher.search(query)
    assert len(got.hits) == 5 and not {h.id for h in got.hits} & set(gone)


def test_the_id_range_a_query_samples_from_is_read_without_a_table_scan(big: Settings) -> None:
    """Each query's background sample starts from the lowest and highest image ids; read as
    one `min(), max()` SELECT, SQLite scanned the whole table (10M photos: 1.5 GB)."""
    from sqlalchemy import event

    from indexer.lookups import id_range

    home = Home(big)
    steps: list[int] = []

    @event.listens_for(home.engine, "connect")
    def count_steps(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.set_progress_handler(lambda: steps.append(1) and 0, 1)

    home.engine.dispose()  # connections made from here on count their VM instructions
    with home.engine.connect() as conn:
        ids = [row[0] for row in conn.exec_driver_sql("SELECT id FROM images")]
    steps.clear()
    assert id_range(home) == (min(ids), max(ids))
    assert 0 < len(steps) < 200, len(steps)  # a scan of 4,000 rows takes over 8,000


def test_re_scoring_reads_the_vector_file_without_mapping_it(big: Settings) -> None:
    """A server re-scores a thousand scattered rows per query: the pages of a mapped vector
    file stayed in its resident memory (10M photos: 6 GB after 500 queries, and growing)."""
    home = Home(big)
    searcher = Searcher(home, get_encoder(big))
    for q in _clustered(20, 12):
        assert len(searcher.search(Query(image_vector=q, k=10)).hits) == 10
    state = searcher._state()
    assert state is not None and state.store is not None  # the hits were re-scored from it
    assert str(home.vectors_path(_key(big))) not in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("dim", [8, 6])  # rows of whole 8-byte words, and rows that are not
def test_the_vector_file_returns_only_stored_rows_in_the_order_asked(
    tmp_path: Path, dim: int
) -> None:
    rng = np.random.default_rng(4)
    vecs = rng.standard_normal((20, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, 21, dtype=np.int64)
    store = vecstore.write_store(tmp_path / "v.f16", dim, 1, [(ids[:15], vecs[:15])], top=30)
    store.put(ids[15:], vecs[15:])
    store.drop(np.array([3, 7]))
    asked = np.array([20, 3, 1, 99, 7, -1, 25, 16])  # dropped, past the end, never stored
    found, rows = store.get(asked)
    assert found.tolist() == [20, 1, 16]
    assert np.abs(rows - vecs[[19, 0, 15]]).max() < 1e-3
    assert rows.dtype == np.float32
    for nothing in (np.array([], np.int64), np.array([99, -1])):
        found, rows = store.get(nothing)
        assert found.tolist() == [] and rows.shape == (0, dim)
    # Runs of consecutive ids are read a run at a time: one spanning a dropped row, the
    # end of what was written first and rows never stored, another right after it.
    found, rows = store.get(np.array([5, 6, 7, 8, 13, 14, 15, 16, 17, 24, 25, 26, 2, 1]))
    assert found.tolist() == [5, 6, 8, 13, 14, 15, 16, 17, 2, 1]
    assert np.abs(rows - vecs[[4, 5, 7, 12, 13, 14, 15, 16, 1, 0]]).max() < 1e-3
    # A run longer than one read takes (`_RUN_ROWS`) comes back whole.
    many = vecstore._RUN_ROWS + 10
    big = rng.standard_normal((many, dim)).astype(np.float32)
    every = np.arange(1, many + 1, dtype=np.int64)
    store = vecstore.write_store(tmp_path / "big.f16", dim, 1, [(every, big)], top=many + 1)
    found, rows = store.get(every)
    assert found.tolist() == every.tolist()
    assert np.abs(rows - big).max() < 1e-2 * np.abs(big).max()
