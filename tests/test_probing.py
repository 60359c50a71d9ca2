"""Texts probe the lists their centroid scores call for (`indexer.probing`, issue 12): a
text close to one topic the tuned lists, a flat one (its neighbours spread over lists that
score alike) those within the margin the build measured."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer import ondisk, ondisk_build, probing
from indexer.faiss_ops import exact_search
from indexer.ondisk import OnDiskIVF
from indexer.policy import Policy, with_policy
from indexer.vectors import VectorIndex

DIM = 128
N = 20_000
CLUSTERS = 200
SPREAD = 0.7


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[OnDiskIVF, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM))
    vecs = _unit(centres[rng.integers(0, CLUSTERS, N)] + SPREAD * rng.standard_normal((N, DIM)))
    place = tmp_path_factory.mktemp("probing") / "index.faiss"
    index = ondisk_build.build_tuned(
        "OnDisk,OPQ16,IVF128,PQ16",
        DIM,
        np.arange(N, dtype=np.int64),
        ondisk.ArrayRows(vecs),
        place,
        with_policy(max_probe_fraction=1.0),
    )
    return index, vecs, centres


def _recall(
    index: OnDiskIVF,
    vecs: np.ndarray,
    queries: np.ndarray,
    probes: list[int],
    candidates: list[int] | None = None,
) -> float:
    _, truth = exact_search(vecs, queries, 10)
    hits = 0
    for i, (q, lists, want) in enumerate(zip(queries, probes, truth, strict=True)):
        many = candidates[i] if candidates is not None else 200
        _, found = index.search(q[None], many, faiss.SearchParametersIVF(nprobe=lists))
        found = found[0][found[0] >= 0]
        top = found[np.argsort(-(vecs[found] @ q))[:10]]
        hits += len(set(top.tolist()) & set(want.tolist()))
    return hits / (10 * len(queries))


def _probes(index: OnDiskIVF, policy: Policy, queries: np.ndarray) -> list[int]:
    return [probing.probes(index, policy, True, q[None]) for q in queries]


def test_the_margin_is_measured_at_build_and_kept_with_the_base(
    built: tuple[OnDiskIVF, np.ndarray, np.ndarray],
) -> None:
    index, _, _ = built
    assert 0 < index.probe_margin < 1
    meta = json.loads((index.folder / ondisk.META_FILE).read_text())
    assert meta["probe_margin"] == pytest.approx(index.probe_margin)
    assert ondisk.open_base(index.folder).probe_margin == pytest.approx(index.probe_margin)


def test_a_topical_text_probes_the_tuned_lists_and_a_flat_one_finds_more(
    built: tuple[OnDiskIVF, np.ndarray, np.ndarray],
) -> None:
    index, vecs, centres = built
    policy = with_policy(max_probe_fraction=1.0)
    rng = np.random.default_rng(5)
    topical = _unit(
        centres[rng.integers(0, CLUSTERS, 30)] + SPREAD * rng.standard_normal((30, DIM))
    )
    flat = probing.random_directions(30, DIM, np.random.default_rng(7))
    tuned = index.nprobe
    fixed = min(index.nlist, tuned * int(policy.unlike_probe_factor))  # without a margin

    # A topical text costs what an image query costs (before: the fixed multiple), and
    # finds the same neighbours.
    near = _probes(index, policy, topical)
    assert np.mean(near) < 1.5 * tuned < fixed
    assert _recall(index, vecs, topical, near) >= 0.99
    # A flat text probes more lists than the fixed multiple gave it, and finds more of its
    # true neighbours.
    far = _probes(index, policy, flat)
    assert np.mean(far) > fixed
    assert _recall(index, vecs, flat, far) >= _recall(index, vecs, flat, [fixed] * 30) + 0.04
    # An image query (not unlike the photos) probes the tuned lists.
    assert [probing.probes(index, policy, False, q[None]) for q in flat] == [tuned] * 30


def test_a_flat_text_re_scores_more_candidates_and_finds_more(
    built: tuple[OnDiskIVF, np.ndarray, np.ndarray],
) -> None:
    index, vecs, centres = built
    policy = with_policy(max_probe_fraction=1.0)
    base = 200
    flat = probing.random_directions(30, DIM, np.random.default_rng(7))
    rng = np.random.default_rng(5)
    topical = _unit(
        centres[rng.integers(0, CLUSTERS, 30)] + SPREAD * rng.standard_normal((30, DIM))
    )

    def wanted(queries: np.ndarray, unlike: bool = True) -> list[int]:
        return [probing.candidates(index, policy, unlike, q[None], base) for q in queries]

    far, lists = wanted(flat), _probes(index, policy, flat)
    assert base < np.mean(far) and max(far) <= policy.max_candidate_factor * base
    # (measured: 0.89 from 200 candidates, 0.96 from about 580)
    assert _recall(index, vecs, flat, lists, far) >= _recall(index, vecs, flat, lists) + 0.04
    # A topical text, and any image query, re-scores the kind's count.
    assert wanted(topical) == [base] * 30
    assert wanted(flat, unlike=False) == [base] * 30
    # So does the searcher, through the index it holds.
    held = VectorIndex(DIM, index, built=N, policy=policy)
    assert held.probe_margin == index.probe_margin
    kinds_count = held.candidates(10)
    assert held.candidates(10, flat[:1], unlike=True) > kinds_count
    assert held.candidates(10, topical[:1], unlike=True) == kinds_count


def test_an_index_without_a_margin_probes_the_fixed_multiple(
    built: tuple[OnDiskIVF, np.ndarray, np.ndarray],
) -> None:
    index, _, _ = built
    policy = with_policy(max_probe_fraction=1.0)
    old = ondisk.open_base(index.folder)
    old.probe_margin = 0.0  # a base built before the margin was measured
    old.nprobe = index.nprobe
    q = probing.random_directions(1, DIM, np.random.default_rng(8))
    assert probing.probes(old, policy, True, q) == min(
        old.nlist, index.nprobe * int(policy.unlike_probe_factor)
    )
    assert probing.candidates(old, policy, True, q, 200) == 200


def test_an_in_memory_index_measures_its_margin_and_keeps_it_in_its_file(
    built: tuple[OnDiskIVF, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    _, vecs, centres = built
    policy = with_policy(exact_limit=1000, max_probe_fraction=1.0)
    ids = np.arange(1, N + 1, dtype=np.int64)
    index = VectorIndex.build(DIM, ids, vecs, policy)
    assert index.kind.endswith(",SQ8") and 0 < index.probe_margin < 1
    tuned, fixed = index.nprobe, index.nprobe * int(policy.unlike_probe_factor)
    rng = np.random.default_rng(5)
    topical = _unit(
        centres[rng.integers(0, CLUSTERS, 30)] + SPREAD * rng.standard_normal((30, DIM))
    )
    flat = probing.random_directions(30, DIM, np.random.default_rng(7))

    def lists(queries: np.ndarray) -> list[int]:
        return [
            probing.probes(index.index, policy, True, q[None], index.probe_margin) for q in queries
        ]

    # The same structure as an index saved before margins were measured would open.
    unmeasured = VectorIndex(DIM, index.index, built=N, policy=policy)
    assert unmeasured.probe_margin == 0

    def recall(queries: np.ndarray, index: VectorIndex) -> float:
        """As the searcher searches a text: its candidates, re-scored exactly."""
        _, truth = exact_search(vecs, queries, 10)
        hits = 0
        for q, want in zip(queries, truth, strict=True):
            _, found = index.search(
                q[None], index.candidates(10, q[None], unlike=True), unlike=True
            )
            found = found[0][found[0] >= 0]
            top = found[np.argsort(-(vecs[found - 1] @ q))[:10]]
            hits += len(set((top - 1).tolist()) & set(want.tolist()))
        return hits / (10 * len(queries))

    # Topical texts probe about the tuned lists (before: the fixed multiple), flat ones
    # more than it, and find more of their neighbours than with the fixed multiple.
    assert np.mean(lists(topical)) < 1.5 * tuned < fixed < np.mean(lists(flat))
    assert recall(topical, index) >= 0.99
    assert recall(flat, index) >= recall(flat, unmeasured) + 0.04
    # Saved and opened again, the index keeps its margin.
    index.save(tmp_path / "index.faiss", generation=3)
    opened, why = VectorIndex.open(tmp_path / "index.faiss", DIM, 3, N, policy)
    assert opened is not None, why
    assert opened.probe_margin == pytest.approx(index.probe_margin, abs=1e-6)
    # So does one rebuilt in the background (as a searcher rebuilds an ill-suited index).
    unmeasured.rebuild_async(lambda: (ids, vecs))
    unmeasured.wait_rebuild()
    assert unmeasured.probe_margin == pytest.approx(index.probe_margin, abs=1e-6)
