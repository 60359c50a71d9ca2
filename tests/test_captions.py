"""Captions with a tiny ViT-GPT-2 built here: on demand, stored, searchable, and optional."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.server import create_app
from indexer.db import Caption
from indexer.home import Home
from indexer.settings import Settings
from tests.fakes import SENTENCES, build_tiny_captioner
from tests.helpers import run_cli


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_captioner(tmp_path_factory.mktemp("captioner") / "tiny-vit-gpt2")


@pytest.fixture
def client(env, photos: Path, tiny_captioner: Path, monkeypatch, capsys) -> Iterator[TestClient]:
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", str(tiny_captioner))
    assert run_cli(capsys, "index", str(photos)).code == 0
    with TestClient(create_app()) as c:
        yield c


def _captions() -> dict[str, str]:
    with Home(Settings()).session() as s:
        return {c.content_hash: c.text for c in s.scalars(select(Caption))}


def test_captions_generated_once_then_read_back(client: TestClient) -> None:
    assert client.get("/ready").json()["captioner"] == "vision-encoder-decoder:tiny-vit-gpt2"
    body = {"text": "x", "k": 4, "cutoff": False, "captions": True}
    first = client.post("/search", json=body).json()["results"]
    assert all(isinstance(h["caption"], str) for h in first)
    stored = _captions()
    assert len(stored) == 4
    # Edit the stored captions: a second request must return them, not generate again.
    with Home(Settings()).session() as s, s.begin():
        s.execute(update(Caption).values(text="stored caption"))
    again = client.post("/search", json=body).json()["results"]
    assert [h["caption"] for h in again] == ["stored caption"] * 4
    assert [h["id"] for h in again] == [h["id"] for h in first]
    without = client.post("/search", json={**body, "captions": False}).json()["results"]
    assert {h["caption"] for h in without} == {None}


def test_stored_captions_add_a_keyword_signal(client: TestClient, monkeypatch) -> None:
    plain = client.post("/search", json={"text": "bicycle", "k": 12, "cutoff": False}).json()
    last = plain["results"][-1]
    client.post("/search", json={"image_id": last["id"], "k": 1, "captions": True})
    with Home(Settings()).session() as s, s.begin():
        s.execute(update(Caption).values(text="a red bicycle leaning on a wall"))
    monkeypatch.setenv("PIXSEARCH_LEXICAL_WEIGHT", "0.5")
    with TestClient(create_app()) as c:
        boosted = c.post("/search", json={"text": "bicycle", "k": 12, "cutoff": False}).json()
    assert boosted["results"][0]["id"] == last["id"]


def test_generative_rerank_reorders_the_top(client: TestClient) -> None:
    base = client.post(
        "/search", json={"text": "a dog on a beach", "k": 12, "cutoff": False}
    ).json()["results"]
    gen = client.post(
        "/search",
        json={"text": "a dog on a beach", "k": 12, "cutoff": False, "rerank": "generative"},
    ).json()["results"]
    assert {h["id"] for h in gen} == {h["id"] for h in base}
    res = client.post("/search", json={"image_id": base[0]["id"], "rerank": "generative"})
    assert res.status_code == 400 and "text" in res.json()["detail"]


def test_generative_rerank_of_a_query_longer_than_the_decoder(client: TestClient) -> None:
    # The tiny decoder has 64 positions; 1000 characters are a few hundred tokens.
    text = " ".join(SENTENCES)[:1000]
    body = {"text": text, "k": 5, "cutoff": False, "rerank": "generative"}
    res = client.post("/search", json=body)
    assert res.status_code == 200, res.text
    assert len(res.json()["results"]) == 5


def test_index_with_captions_fills_the_store(
    env, photos: Path, tiny_captioner: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", str(tiny_captioner))
    assert run_cli(capsys, "index", "--captions", str(photos)).code == 0
    assert len(_captions()) == 12


def test_missing_captioner_is_one_line_and_search_still_works(
    env, photos: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", "nlpconnect/vit-gpt2-image-captioning")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run_cli(capsys, "index", "--captions", str(photos))
    assert res.code == 1 and res.err.count("\n") == 1
    assert "cannot load captioner 'nlpconnect/vit-gpt2-image-captioning'" in res.err
    assert "PIXSEARCH_CAPTIONER" in res.err
    run_cli(capsys, "index", str(photos))
    with TestClient(create_app()) as c:
        body = c.post("/search", json={"text": "x", "k": 3, "captions": True}).json()
    assert len(body["results"]) == 3 and {h["caption"] for h in body["results"]} == {None}
    assert "cannot load captioner" in body["notice"]
