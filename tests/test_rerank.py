"""Reranking, the automatic cut-off and filters, on homes of synthetic vectors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.server import create_app
from indexer.encoder import model_key
from indexer.settings import Settings
from tests.fakes import synthetic_home

DIM = 32


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _near(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    v = centre + spread * rng.standard_normal((n, DIM))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def layout(env, tmp_path: Path, monkeypatch) -> Iterator[tuple[TestClient, list[int]]]:
    """300 scattered photos, a burst of 8 near-identical shots, a cluster of 6 related ones."""
    monkeypatch.setenv("PIXSEARCH_DEDUPE_THRESHOLD", "0.97")
    rng = np.random.default_rng(7)
    burst_centre, cluster_centre = _unit(rng, 2)
    vectors = np.vstack(
        [
            _unit(rng, 300),
            _near(rng, burst_centre, 8, 0.01),  # ids 301-308: cos > 0.99 to each other
            _near(rng, cluster_centre, 6, 0.06),  # ids 309-314: related, not duplicates
        ]
    )
    settings = Settings()
    key = model_key(settings.model, settings.pretrained)
    ids = synthetic_home(settings, key, vectors, tmp_path / "lib")
    with TestClient(create_app()) as client:
        yield client, ids


def _ids(client: TestClient, **body: object) -> list[int]:
    res = client.post("/search", json=body)
    assert res.status_code == 200, res.text
    return [h["id"] for h in res.json()["results"]]


def test_near_duplicates_collapse(layout) -> None:
    client, ids = layout
    burst = set(ids[300:308])
    collapsed = _ids(client, image_id=ids[300], k=10, cutoff=False)
    assert collapsed[0] == ids[300] and len(burst & set(collapsed)) == 1
    plain = _ids(client, image_id=ids[300], k=10, cutoff=False, rerank=False)
    assert burst <= set(plain)


def test_cutoff_keeps_only_what_matches(layout) -> None:
    client, ids = layout
    cluster = set(ids[308:314])
    got = client.post("/search", json={"image_id": ids[308], "k": 100}).json()
    found = [h["id"] for h in got["results"]]
    # The related photos first, then at most the top slice of the 300 unrelated ones: an
    # image query keeps what stands clearly above the query's background level.
    assert set(found[:6]) == cluster
    assert len(found) < 6 + 0.15 * 300, len(found)
    assert got["cutoff"] is not None and not got["cut_off"]
    assert all(h["score"] >= got["cutoff"] for h in got["results"])
    # Without the cut-off, k results come back; min_score alone is also honoured.
    assert len(_ids(client, image_id=ids[308], k=50, cutoff=False)) == 50
    strict = _ids(client, image_id=ids[308], k=50, cutoff=False, min_score=0.999)
    assert strict == [ids[308]]


def test_mmr_spreads_results(layout) -> None:
    client, ids = layout
    cluster = set(ids[308:314])
    relevance = _ids(client, image_id=ids[308], k=6, cutoff=False)
    diverse = _ids(client, image_id=ids[308], k=6, cutoff=False, rerank="mmr", mmr_lambda=0.3)
    assert diverse[0] == ids[308]
    assert len(cluster & set(diverse)) < len(cluster & set(relevance))


def test_filters_inside_the_vector_search(layout) -> None:
    client, ids = layout
    # Only 3 photos were taken in this window, none of them near the query.
    window = {"taken_after": "2020-02-01", "taken_before": "2020-02-03"}
    got = _ids(client, image_id=ids[308], k=5, cutoff=False, filters=window)
    assert set(got) == {ids[31], ids[32], ids[33]}
    # A broad filter (half the collection) still fills the page.
    nikon = _ids(client, image_id=ids[308], k=20, cutoff=False, filters={"camera": "nikon"})
    assert len(nikon) == 20 and all((i - ids[0]) % 2 == 0 for i in nikon)
    wide = _ids(
        client, image_id=ids[308], k=20, cutoff=False, filters={"min_width": 642, "format": "jpg"}
    )
    assert len(wide) == 20 and all((i - ids[0]) % 3 == 2 for i in wide)


def test_paging_with_collapse_is_stable(layout) -> None:
    client, ids = layout
    whole = _ids(client, image_id=ids[300], k=40, cutoff=False)
    paged = []
    for offset in range(0, 40, 10):
        paged += _ids(client, image_id=ids[300], k=10, offset=offset, cutoff=False)
    assert paged == whole and len(set(paged)) == 40
