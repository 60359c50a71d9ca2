"""Answers that used to come back silently wrong: filters on IVF, dates, folders, notices."""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from indexer import policy as policies
from indexer.vectors import Policy
from tests.fakes import synthetic_home
from tests.helpers import make_photos, run_cli


def test_a_broad_filter_on_an_ivf_index_fills_the_page(env, tmp_path: Path, monkeypatch) -> None:
    """1,400 allowed photos, all in IVF lists far from the query: k of them still come back."""
    from indexer.encoder import get_encoder, model_key
    from indexer.home import Home
    from indexer.settings import Settings
    from search.engine import Searcher
    from search.query import Filters, Query

    monkeypatch.setattr(policies, "DEFAULT_POLICY", Policy(tuning_queries=100))
    monkeypatch.setenv("PIXSEARCH_INDEX_EXACT_LIMIT", "1000")
    monkeypatch.setenv("PIXSEARCH_INDEX_PQ_LIMIT", str(10**7))
    monkeypatch.setenv("PIXSEARCH_INDEX_ONDISK_LIMIT", str(10**7))
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 32))
    # Rows 0-2599 around centres 0-29, rows 2600-3999 (the last 1,400 days) around 30-39.
    labels = np.concatenate([np.arange(2600) % 30, 30 + np.arange(1400) % 10])
    vecs = centres[labels] + 0.3 * rng.standard_normal((4000, 32))
    settings = Settings()
    ids = synthetic_home(settings, model_key(settings.model, settings.pretrained), vecs, tmp_path)
    searcher = Searcher(Home(settings), get_encoder(settings))
    assert searcher.index().kind.startswith("IVF128")
    allowed = set(ids[2600:])
    window = Filters(taken_after=date(2020, 1, 1) + timedelta(days=2600))
    query = centres[0] / np.linalg.norm(centres[0])
    # Without the cut-off: the allowed photos are far from the query by construction, and
    # what is checked is that the filter's mechanism finds them, whatever the index kind.
    for rerank in ("none", "standard"):
        got = searcher.search(
            Query(image_vector=query, k=40, cutoff=False, rerank=rerank, filters=window)
        )
        assert len(got.hits) == 40 and {h.id for h in got.hits} <= allowed
    last = searcher.search(
        Query(image_vector=query, k=40, offset=1380, cutoff=False, rerank="none", filters=window)
    )
    assert len(last.hits) == 20


def _client(env, folder: Path, capsys) -> TestClient:
    assert run_cli(capsys, "index", str(folder)).code == 0
    from api.server import create_app

    return TestClient(create_app())


def test_a_relative_folder_filter_is_refused(env, photos: Path, capsys) -> None:
    with _client(env, photos, capsys) as client:
        res = client.post("/search", json={"text": "x", "filters": {"path_prefix": "photos"}})
        assert res.status_code == 422, res.text
        upload = client.post(
            "/search/image",
            files={"file": ("a.jpg", (photos / "img_0001.jpg").read_bytes(), "image/jpeg")},
            data={"path_prefix": "photos"},
        )
        assert upload.status_code == 422, upload.text
        home = client.post("/search", json={"text": "x", "filters": {"path_prefix": str(photos)}})
        assert len(home.json()["results"]) == 12


def test_date_filters_use_the_file_date_of_undated_photos(env, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "scans"
    old = make_photos(folder, 4)
    new = make_photos(folder, 8, start=4)
    for paths, when in ((old, datetime(2019, 6, 1, 12)), (new, datetime(2023, 6, 1, 12))):
        for p in paths:
            os.utime(p, (when.timestamp(), when.timestamp()))
    with _client(env, folder, capsys) as client:

        def ids(**filters: str) -> set[str]:
            body = {"text": "x", "k": 50, "filters": filters}
            res = client.post("/search", json=body).json()
            assert "file date" in res["notice"]
            return {Path(h["path"]).name for h in res["results"]}

        assert ids(taken_after="2022-01-01") == {p.name for p in new}
        assert ids(taken_before="2019-06-01") == {p.name for p in old}
        assert ids(taken_after="2019-06-02", taken_before="2023-05-31") == set()


def test_generative_rerank_without_a_captioner_says_so(env, photos: Path, capsys) -> None:
    with _client(env, photos, capsys) as client:
        res = client.post("/search", json={"text": "a red square", "rerank": "generative"})
        assert res.status_code == 200
        assert "captioner" in res.json()["notice"]


def test_one_search_reads_the_model_row_once(env, photos: Path, capsys) -> None:
    from sqlalchemy import event

    with _client(env, photos, capsys) as client:
        client.post("/search", json={"text": "warm up"})
        engine = client.app.state.service.home.engine  # type: ignore[attr-defined]
        statements: list[str] = []

        def seen(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", seen)
        try:
            res = client.post("/search", json={"text": "something else", "captions": False})
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        assert res.status_code == 200
        assert sum("FROM models" in s for s in statements) == 1, statements
        assert sum("FROM embeddings" in s or "JOIN embeddings" in s for s in statements) == 1
