"""The generative rerank with the trained tiny CLIP and ClipCap: the likelihood decides.

The data set (seed 777) was never seen in training; see tests/assets/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.server import create_app
from indexer.captioners.clipcap import ClipCapCaptioner
from indexer.db import Image
from indexer.encoder import get_encoder
from indexer.home import Home
from indexer.pipeline import Indexer
from indexer.settings import Settings
from search.rerank import fuse
from tests.assets.tiny_models import (
    make_synthetic_dataset,
    materialize_tiny_captioner,
    materialize_tiny_clip,
    shapes_module,
)

SEED, COUNT = 777, 80


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained models and a home holding the indexed synthetic shapes."""
    base = tmp_path_factory.mktemp("generative")
    config, checkpoint = materialize_tiny_clip(base / "clip")
    captioner = materialize_tiny_captioner(base / "captioner")
    data = make_synthetic_dataset(base / "shapes", seed=SEED, count=COUNT)
    cfg = Settings(
        home=base / "home",
        model=str(config),
        pretrained=str(checkpoint),
        captioner="none",
        database_url=None,
    )
    report = Indexer(Home(cfg), get_encoder(cfg)).run([str(data / "images")])
    assert report.added == COUNT and not report.failed
    return {"home": base / "home", "config": config, "checkpoint": checkpoint, "cap": captioner}


@pytest.fixture
def shapes_env(shapes: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The environment of a user searching that home with the ClipCap captioner."""
    monkeypatch.setenv("PIXSEARCH_HOME", str(shapes["home"]))
    monkeypatch.setenv("PIXSEARCH_MODEL", str(shapes["config"]))
    monkeypatch.setenv("PIXSEARCH_PRETRAINED", str(shapes["checkpoint"]))
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", str(shapes["cap"]))
    # Only the two signals under test: no keyword boost from stored captions.
    monkeypatch.setenv("PIXSEARCH_LEXICAL_WEIGHT", "0")
    monkeypatch.delenv("PIXSEARCH_DEDUPE_THRESHOLD", raising=False)
    monkeypatch.delenv("PIXSEARCH_DATABASE_URL", raising=False)
    return shapes


@pytest.fixture
def client(shapes_env: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


def _vectors(ids: list[int]) -> np.ndarray:
    """The stored CLIP embeddings of these images, in this order."""
    home = Home(Settings())
    model = home.model_row(get_encoder(Settings()).key)
    assert model is not None
    found, vecs = home.stored_vectors(model.id, model.dim, np.asarray(ids))
    row = {int(i): n for n, i in enumerate(found)}
    return vecs[[row[i] for i in ids]]


def _ids(client: TestClient, **body: object) -> list[int]:
    res = client.post("/search", json={"k": 20, "cutoff": False, **body})
    assert res.status_code == 200, res.text
    return [h["id"] for h in res.json()["results"]]


def test_generative_rerank_of_a_query_longer_than_the_decoder(client: TestClient) -> None:
    # The captioner's GPT-2 has 32 positions, 4 of them for the image prefix.
    text = ("a large red circle on a blue background, " * 30)[:1000]
    assert len(_ids(client, text=text, rerank="generative")) == 20


def test_the_likelihood_decides_the_order_at_weight_one(
    shapes_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "a small green star on a yellow background"
    monkeypatch.setenv("PIXSEARCH_GENERATIVE_WEIGHT", "0")
    with TestClient(create_app()) as c:
        by_clip = _ids(c, text=text, rerank="standard")
        at_zero = _ids(c, text=text, rerank="generative")
    monkeypatch.setenv("PIXSEARCH_GENERATIVE_WEIGHT", "1")
    with TestClient(create_app()) as c:
        at_one = _ids(c, text=text, rerank="generative")
    # The same 20 candidates (the top max(k, 20) are reordered)...
    assert at_zero == by_clip and sorted(at_one) == sorted(by_clip)
    # ...ordered by CLIP at weight 0 and by the caption likelihood alone at weight 1,
    # computed here straight from each hit's own stored embedding.
    loglik = ClipCapCaptioner(shapes_env["cap"]).score_texts(_vectors(at_one), text)
    assert list(np.argsort(-loglik, kind="stable")) == list(range(len(at_one))), loglik
    assert at_one != by_clip  # else this test could not tell an ignored likelihood apart


def test_the_likelihood_picks_the_described_picture(shapes_env: dict[str, Path]) -> None:
    """CLIP crafted against the right picture: at weight 1 the likelihood finds it anyway."""
    samples = shapes_module().generate_samples(SEED, COUNT)
    with Home(Settings()).session() as s:
        ids = {Path(p).name: i for p, i in s.execute(select(Image.path, Image.id))}
    order = [ids[Path(sample.path).name] for sample in samples]
    vecs = _vectors(order)
    captioner = ClipCapCaptioner(shapes_env["cap"])
    first = last = 0
    for n, sample in enumerate(samples[:40]):
        loglik = captioner.score_texts(vecs, sample.captions[0])  # the canonical caption
        clip = np.ones(COUNT, np.float32)
        clip[n] = 0.0  # every other picture looks better to "CLIP"
        first += int(np.argmax(fuse(clip, loglik, 1.0))) == n
        last += int(np.argsort(-fuse(clip, loglik, 0.0), kind="stable")[-1]) == n
    assert last == 40
    # Chance is 1 in 80; the captioner prefers the true caption for most pictures.
    assert first >= 32, first
