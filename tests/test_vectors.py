"""The FAISS index: kinds chosen by size, tuning, changes, files, rebuilds (synthetic vectors)."""

from __future__ import annotations

import math
import threading
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer import policy as policies
from indexer import probing
from indexer.vectors import Policy, VectorIndex, choose_kind, exact_search, rescore

DIM = 32


def clustered(n: int, seed: int = 0, clusters: int = 40, spread: float = 0.35) -> np.ndarray:
    """Unit vectors in clusters of uneven sizes (uniform random vectors defeat any ANN)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1000).standard_normal((clusters, DIM))
    weights = 1.0 / np.arange(1, clusters + 1)
    labels = rng.choice(clusters, n, p=weights / weights.sum())
    x = centres[labels] + spread * np.sqrt(DIM) * rng.standard_normal((n, DIM)) / 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def queries(n: int, seed: int = 99) -> np.ndarray:
    """Queries near the data but not on it."""
    rng = np.random.default_rng(seed)
    q = clustered(n, seed) + 0.15 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def recall_after_rescore(
    index: VectorIndex, ids: np.ndarray, vecs: np.ndarray, qs: np.ndarray, k: int = 10
) -> float:
    """recall@k of index search + exact re-scoring, against exact search."""
    pos_of = {int(i): p for p, i in enumerate(ids)}
    _, truth = exact_search(vecs, qs, k)
    hits = 0
    for q, t in zip(qs, truth, strict=True):
        _, cand = index.search(q[None], index.candidates(k))
        cand = cand[0][cand[0] >= 0]
        _, top = rescore(q, cand, vecs[[pos_of[int(c)] for c in cand]], k)
        hits += len(set(top.tolist()) & {int(ids[p]) for p in t})
    return hits / (k * len(qs))


@pytest.fixture
def small_policy(monkeypatch: pytest.MonkeyPatch) -> Policy:
    """Thresholds small enough for unit tests: exact up to 1,000 vectors, PQ above 6,000."""
    policy = Policy(exact_limit=1000, pq_limit=6000, tuning_queries=100)
    monkeypatch.setattr(policies, "DEFAULT_POLICY", policy)
    monkeypatch.setenv("PIXSEARCH_INDEX_EXACT_LIMIT", "1000")
    monkeypatch.setenv("PIXSEARCH_INDEX_PQ_LIMIT", "6000")
    return policy


def test_the_kind_follows_the_collection_size() -> None:
    assert choose_kind(0, 512) == "SQfp16"
    assert choose_kind(50_000, 512) == "SQfp16"
    assert choose_kind(50_001, 512) == "IVF512,SQ8"
    assert choose_kind(200_001, 512) == "IVF1024,SQ8"
    assert choose_kind(1_000_000, 512) == "IVF2048,SQ8"
    assert choose_kind(5_000_000, 512) == "IVF4096,PQ64"
    assert VectorIndex(512).kind == "SQfp16"


def test_exact_kind_gives_the_exact_top_k_after_rescoring() -> None:
    vecs = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3
    index = VectorIndex.build(DIM, ids, vecs)
    assert index.kind == "SQfp16" and len(index) == 3000 and not index.exact
    assert index.candidates(10) > 10
    qs = queries(30)
    assert recall_after_rescore(index, ids, vecs, qs) == 1.0
    scores, found = index.search(qs[:1], 5)
    exact = vecs[(found[0] - 3) // 7] @ qs[0]
    np.testing.assert_allclose(scores[0], exact, atol=2e-3)


def test_ivf_kind_is_built_and_tuned_for_recall(small_policy: Policy) -> None:
    vecs = clustered(4000)
    ids = np.arange(4000, dtype=np.int64) + 100
    index = VectorIndex.build(DIM, ids, vecs)
    assert index.kind.startswith("IVF") and index.kind.endswith(",SQ8")
    assert 1 <= index.nprobe <= index.index.nlist // 4
    assert index.candidates(10) >= 30
    assert recall_after_rescore(index, ids, vecs, queries(100)) >= 0.9
    assert index.wants_rebuild() is None


def test_pq_kind_past_the_pq_limit(small_policy: Policy) -> None:
    vecs = clustered(7000)
    ids = np.arange(7000, dtype=np.int64)
    index = VectorIndex.build(DIM, ids, vecs)
    assert index.kind.endswith(",PQ4")
    assert index.candidates(10) >= 100
    assert recall_after_rescore(index, ids, vecs, queries(50)) >= 0.8


def test_ivf_adds_and_removes_without_rebuilding(small_policy: Policy) -> None:
    vecs = clustered(3000)
    ids = np.arange(3000, dtype=np.int64)
    index = VectorIndex.build(DIM, ids, vecs)
    kind, structure = index.kind, index.index
    new = clustered(20, seed=5)
    new_ids = np.arange(10_000, 10_020, dtype=np.int64)
    index.add(new_ids, new)
    assert len(index) == 3020 and index.index is structure and index.kind == kind
    _, found = index.search(new[3:4], 1)
    assert found[0, 0] == 10_003
    index.add(new_ids[:5], new[:5])  # adding an id again replaces it
    assert len(index) == 3020
    _, found = index.search(new[3:4], 10)
    assert list(found[0]).count(10_003) == 1
    index.remove(np.asarray([10_003, 424_242]))  # absent ids are ignored
    assert len(index) == 3019
    _, found = index.search(new[3:4], 10)
    assert 10_003 not in found[0]


def test_save_and_open_keep_kind_and_tuning(tmp_path: Path, small_policy: Policy) -> None:
    vecs = clustered(3000)
    ids = np.arange(3000, dtype=np.int64)
    index = VectorIndex.build(DIM, ids, vecs)
    path = tmp_path / "index.faiss"
    index.save(path, 7)
    opened, why = VectorIndex.open(path, DIM, 7, 3000)
    assert opened is not None, why
    assert (opened.kind, opened.nprobe, opened.built) == (index.kind, index.nprobe, 3000)
    qs = queries(5)
    np.testing.assert_array_equal(opened.search(qs, 10)[1], index.search(qs, 10)[1])
    assert VectorIndex.open(path, DIM, 8, 3000)[1].startswith("stale")
    assert VectorIndex.open(path, DIM, 7, 2999)[1].startswith("holds")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert VectorIndex.open(path, DIM, 7, 3000)[1].startswith("unreadable")
    assert VectorIndex.open(tmp_path / "nope", DIM, 7, 3000) == (None, "missing")
    assert not list(tmp_path.glob(".*tmp"))


def test_an_old_float32_flat_file_still_works(tmp_path: Path) -> None:
    vecs = clustered(500)
    ids = np.arange(500, dtype=np.int64)
    index = VectorIndex(DIM, faiss.IndexIDMap2(faiss.IndexFlatIP(DIM)))
    index.add(ids, vecs)
    index.save(tmp_path / "i", 1)
    opened, _ = VectorIndex.open(tmp_path / "i", DIM, 1, 500)
    assert opened is not None
    assert (opened.kind, opened.exact, opened.candidates(10)) == ("Flat", True, 10)
    assert opened.wants_rebuild() is None


def test_rebuild_is_wanted_when_the_collection_outgrows_its_index(small_policy: Policy) -> None:
    vecs = clustered(6000)
    ids = np.arange(6000, dtype=np.int64)
    exact = VectorIndex(DIM)
    exact.add(ids[:900], vecs[:900])
    assert exact.wants_rebuild() is None
    exact.add(ids[900:1100], vecs[900:1100])
    assert "exact-search limit" in (exact.wants_rebuild() or "")
    ivf = VectorIndex.build(DIM, ids[:1200], vecs[:1200])
    assert ivf.kind.startswith("IVF") and ivf.wants_rebuild() is None
    ivf.add(ids[1200:4900], vecs[1200:4900])  # more than 4x what it was trained for
    assert "since it was trained" in (ivf.wants_rebuild() or "")
    ivf.remove(ids[400:4900])
    assert "few enough for exact" in (ivf.wants_rebuild() or "")


def test_background_rebuild_swaps_in_and_replays_changes(small_policy: Policy) -> None:
    vecs = clustered(1600)
    ids = np.arange(1600, dtype=np.int64)
    index = VectorIndex(DIM)
    index.add(ids[:1500], vecs[:1500])
    assert index.wants_rebuild() is not None
    gate = threading.Event()
    results: list[bool] = []

    def load() -> tuple[np.ndarray, np.ndarray]:
        gate.wait(10)
        return ids[:1500], vecs[:1500]

    thread = index.rebuild_async(load, lambda _vi, clean: results.append(clean))
    assert thread is not None and index.rebuilding
    assert index.rebuild_async(load) is None  # one at a time
    assert index.wants_rebuild() is None
    # Searches and changes go on meanwhile, on the old structure.
    assert index.kind == "SQfp16"
    assert index.search(vecs[7:8], 1)[1][0, 0] == 7
    index.add(ids[1500:], vecs[1500:])
    index.remove(ids[:10])
    gate.set()
    thread.join(30)
    assert not index.rebuilding and results == [False]
    assert index.kind.startswith("IVF")
    assert len(index) == 1590
    assert index.search(vecs[1550:1551], 1)[1][0, 0] == 1550
    assert 5 not in index.search(vecs[5:6], 10)[1][0]


def test_search_subset_stays_in_the_subset(small_policy: Policy) -> None:
    vecs = clustered(3000)
    ids = np.arange(3000, dtype=np.int64)
    allowed = np.arange(0, 3000, 97, dtype=np.int64)
    q = queries(1)
    best = allowed[np.argmax(vecs[allowed] @ q[0])]
    for index in (VectorIndex.build(DIM, ids[:900], vecs[:900]), VectorIndex.build(DIM, ids, vecs)):
        sub = allowed[allowed < len(index)]
        _, found = index.search_subset(q, 10, sub)
        got = found[0][found[0] >= 0]
        assert len(got) == min(10, len(sub)) and set(got) <= set(sub.tolist())
        if len(index) == 3000:
            _, top = rescore(q[0], got, vecs[got], 1)
            assert top[0] == best
    empty = VectorIndex(DIM).search_subset(q, 10, allowed)
    assert empty[1].shape == (1, 0)


def _synthetic_home(root: Path, vecs: np.ndarray) -> tuple[object, int]:
    """A home whose database holds images with these embeddings (no files behind them)."""
    from sqlalchemy import insert

    from indexer.db import Embedding, Image, Model
    from indexer.home import Home
    from indexer.settings import Settings

    home = Home(Settings(home=root, model="test-model", pretrained="none"))
    now = datetime(2024, 1, 1)
    with home.engine.begin() as conn:
        model_id = conn.execute(
            insert(Model).values(name="m/x", dim=DIM, generation=1).returning(Model.id)
        ).scalar_one()
        conn.execute(
            insert(Image),
            [
                {
                    "path": f"/p/{i}.jpg",
                    "size": 1,
                    "mtime_ns": 1,
                    "content_hash": f"{i:032x}",
                    "width": 1,
                    "height": 1,
                    "format": "jpeg",
                    "indexed_at": now,
                }
                for i in range(len(vecs))
            ],
        )
        conn.execute(
            insert(Embedding),
            [
                {"content_hash": f"{i:032x}", "model_id": model_id, "vector": v.tobytes()}
                for i, v in enumerate(vecs)
            ],
        )
    return home, model_id


def test_home_rebuilds_an_ill_suited_index_in_the_background(
    tmp_path: Path, small_policy: Policy
) -> None:
    vecs = clustered(1500)
    home, model_id = _synthetic_home(tmp_path / "home", vecs)
    ids, stored = home.stored_vectors(model_id, DIM)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(stored, vecs)
    # A valid saved index of a kind the collection has outgrown (written by an older run).
    old = VectorIndex(DIM)
    old.add(ids, stored)
    path = home.index_path("m/x")  # type: ignore[attr-defined]
    old.save(path, 1)
    index = home.load_index("m/x", model_id, DIM)  # type: ignore[attr-defined]
    assert len(index) == 1500
    assert index.search(vecs[3:4], 1)[1][0, 0] == ids[3]  # usable at once
    index.wait_rebuild(60)
    assert index.kind.startswith("IVF")
    again, why = VectorIndex.open(path, DIM, 1, 1500)
    assert again is not None and again.kind == index.kind, why
    # The next load finds the saved rebuilt index suitable: nothing more to do.
    third = home.load_index("m/x", model_id, DIM)  # type: ignore[attr-defined]
    assert third.kind == index.kind and not third.rebuilding


def test_an_indexing_run_rebuilds_into_ivf_when_it_outgrows_exact_search(
    env, photos: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import run_cli

    monkeypatch.setattr(policies, "DEFAULT_POLICY", Policy(tuning_queries=20))
    monkeypatch.setenv("PIXSEARCH_INDEX_EXACT_LIMIT", "8")
    assert run_cli(capsys, "index", str(photos)).code == 0
    status = run_cli(capsys, "status", "--json").json()
    assert str(status["index_type"]).startswith("IVF")  # type: ignore[index]
    hits = run_cli(capsys, "search", "a cat", "-k", "12", "--json").json()
    assert len(hits) == 12  # type: ignore[arg-type]


def test_rescoring_reads_only_the_candidates_rows(tmp_path: Path) -> None:
    """Fetching a few candidates' embeddings must not walk every embedding of the model
    (SQLite's planner, without statistics, prefers the model_id index unless told not to)."""
    from sqlalchemy import event

    vecs = clustered(3000)
    home, model_id = _synthetic_home(tmp_path / "home", vecs)
    engine = home.engine  # type: ignore[attr-defined]
    engine.dispose()
    steps = [0]

    def count(dbapi_conn: object, _record: object) -> None:
        def tick() -> int:
            steps[0] += 1
            return 0

        dbapi_conn.set_progress_handler(tick, 100)  # type: ignore[attr-defined]

    event.listen(engine, "connect", count)
    want = np.arange(5, 2405, 30)  # a re-scoring pool: 80 candidates
    ids, got = home.stored_vectors(model_id, DIM, want)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_array_equal(got, vecs[want - 1])
    # By id: ~1,500 VM steps. Walking the model's embeddings: ~5,000 per 1,000 images.
    assert steps[0] < 60, f"{steps[0] * 100} SQLite steps to read 80 embeddings"


def test_similar_reports_exact_scores_from_a_compressed_index(
    tmp_path: Path, small_policy: Policy
) -> None:
    """`similar` (the plain ranking, no rerank) shows true cosines, best first, not a
    product-quantised index's approximations."""
    from indexer.encoder import ClipEncoder
    from search.engine import Searcher

    vecs = clustered(7000)
    home, model_id = _synthetic_home(tmp_path / "home", vecs)
    searcher = Searcher(home, ClipEncoder("m", "x"))  # type: ignore[arg-type]
    assert "PQ" in searcher.index().kind
    ids, stored = home.stored_vectors(model_id, DIM)  # type: ignore[attr-defined]
    for probe in (5, 700, 4321):
        hits = searcher.similar(int(ids[probe]), k=10)
        truth = stored @ stored[probe]
        got = np.array([h.score for h in hits])
        want = truth[np.searchsorted(ids, [h.id for h in hits])]
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert hits[0].id == ids[probe] and np.all(np.diff(got) <= 0)


def test_queries_run_numpy_blas_on_one_thread_and_leave_faiss_alone() -> None:
    from threadpoolctl import ThreadpoolController

    from search.engine import single_threaded_numpy_blas

    single_threaded_numpy_blas()
    blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    numpy_side = [c.num_threads for c in blas if "/numpy" in c.filepath]
    assert numpy_side == [1]
    faiss_side = [c.num_threads for c in blas if "faiss" in c.filepath]
    assert all(n == faiss.omp_get_max_threads() for n in faiss_side)


def test_queries_unlike_the_data_probe_their_own_lists() -> None:
    """Text queries sit apart from image embeddings (the modality gap), so an IVF index tuned
    on image-like queries probes, for each text, the lists within its probe margin
    (`indexer.probing`; test_probing.py checks that flat texts get more), or without one a
    fixed multiple of the tuned lists (bench_query.py measures the recall this buys on a
    random text tower's queries)."""
    policy = Policy(exact_limit=1000, pq_limit=10**7, tuning_queries=100)
    vecs = clustered(20000, spread=0.2)
    ids = np.arange(1, len(vecs) + 1, dtype=np.int64)
    index = VectorIndex.build(DIM, ids, vecs, policy=policy)
    assert index.probe_margin > 0
    unmeasured = VectorIndex(DIM, index.index, built=len(ids), policy=policy)
    tuned, nlist = index.nprobe, faiss.extract_index_ivf(index.index).nlist
    fixed = min(max(tuned, nlist // 4), math.ceil(policy.unlike_probe_factor * tuned))
    assert fixed > tuned
    # Five texts near the photos, five as flat as texts come (random directions).
    q = np.concatenate([queries(5), probing.random_directions(5, DIM, np.random.default_rng(3))])
    own = [probing.probes(index.index, policy, True, row[None], index.probe_margin) for row in q]
    assert all(tuned <= lists <= max(tuned, nlist // 4) for lists in own)
    stats = faiss.cvar.indexIVF_stats
    for vi, unlike, lists in (
        (index, False, [tuned] * 10),
        (index, True, own),
        (unmeasured, True, [fixed] * 10),
    ):
        stats.reset()
        vi.search(q, 10, unlike=unlike)
        assert stats.nlist == sum(lists)
        stats.reset()
        vi.search_subset(q, 10, ids[: len(ids) // 2], unlike=unlike)
        assert stats.nlist == 10 * min(nlist, 2 * max(lists))
