"""What a user sees with the defaults: the trained tiny models, cut-off on, ClipCap captions.

300 shapes pictures of seed 2468, which neither the models' training (seed 0) nor the tuning
of the cut-off (seeds 1234, 4321, 777) used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.assets.tiny_models import (
    make_synthetic_dataset,
    materialize_tiny_captioner,
    materialize_tiny_clip,
)
from tests.helpers import post_search, run_cli
from tests.test_quality import _attributes

#: Everyday subjects that no shapes picture shows.
ABSENT = [
    "a dog",
    "a cat sleeping on a sofa",
    "a plate of food",
    "a busy street at night",
    "a bowl of soup",
    "a horse in a field",
    "people at a wedding",
    "a car parked in the street",
    "a sandwich",
    "a city skyline",
    "a bird on a branch",
    "a beach at sunset",
    "a birthday cake",
    "a bicycle",
    "a mountain lake",
    "a child playing football",
    "pizza",
    "an elephant",
    "a laptop on a desk",
    "fireworks",
    "a portrait of a woman",
    "snow on the mountains",
    "a cup of coffee",
    "a train station",
    "a glass of wine",
    "a tiger",
    "a bus",
    "an old man reading",
    "a kitchen",
    "a waterfall",
    "a bowl of ramen",
    "a football stadium",
    "a sailing boat on the sea",
    "a christmas tree",
    "a bride and groom",
    "an airplane in the sky",
    "a teddy bear",
    "a plate of pasta",
    "a crowded market",
    "a lighthouse",
    "a baby sleeping",
    "a pair of shoes",
    "a bookshelf full of books",
    "a skier on a slope",
    "a hamburger and fries",
    "a rainy street with umbrellas",
    "a cow in a meadow",
    "a guitar",
    "a swimming pool",
    "a bridge over a river",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The trained models and 300 indexed pictures, set through the environment."""
    base = tmp_path_factory.mktemp("user_view")
    config, checkpoint = materialize_tiny_clip(base / "clip")
    captioner = materialize_tiny_captioner(base / "captioner")
    data = make_synthetic_dataset(base / "shapes", seed=2468, count=300)
    (data / "absent.txt").write_text("\n".join(ABSENT) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "PIXSEARCH_HOME": str(base / "home"),
            "PIXSEARCH_MODEL": str(config),
            "PIXSEARCH_PRETRAINED": str(checkpoint),
            "PIXSEARCH_CAPTIONER": str(captioner),
        }.items():
            mp.setenv(key, value)
        for key in ("PIXSEARCH_DEDUPE_THRESHOLD", "PIXSEARCH_CUTOFF_Z", "PIXSEARCH_BATCH_SIZE"):
            mp.delenv(key, raising=False)
        from api.cli import main

        try:
            main(["index", str(data / "images")])
        except SystemExit as exc:
            assert not exc.code
        yield {"data": data, "captioner": captioner, "home": base / "home"}


@pytest.fixture(scope="module")
def client(shapes: dict[str, Path]) -> Iterator[TestClient]:
    from api.server import create_app

    with TestClient(create_app()) as c:
        yield c


def test_eval_with_the_defaults(shapes, capsys) -> None:
    """The cut-off keeps the captions' pictures, and answers absent things (nearly) empty."""
    res = run_cli(capsys, "eval", str(shapes["data"]), "--json", "--no-captions")
    assert res.code == 0, res.err
    report = res.json()
    plain = report["by_rerank"]["standard"]["text_to_image"]["recall@10"]
    cut = report["cutoff"]["text_to_image"]["recall@10"]
    assert plain >= 0.95 and plain - cut <= 0.02, report["cutoff"]
    absent = report["cutoff"]["absent"]
    assert absent["queries"] == len(ABSENT)
    assert absent["at_most_3"] >= 0.8, absent
    assert report["cutoff"]["more_like_this_hits"]["min"] >= 10, report["cutoff"]


def test_partial_descriptions_find_their_pictures(shapes, client) -> None:
    """ "a red circle" and the like: a few pictures match among many that share a colour or a
    shape (the old cut-off answered most of these with nothing)."""
    truth = _attributes(shapes["data"])
    present = {(a["colour"], a["shape"]) for a in truth.values()}
    found = 0
    for colour, shape in sorted(present):
        hits = post_search(client, text=f"a {colour} {shape}")["results"]
        top = [(truth[h["path"]]["colour"], truth[h["path"]]["shape"]) for h in hits[:3]]
        found += (colour, shape) in top
    assert found >= 0.8 * len(present), (found, len(present))


def test_more_like_this_and_uploads_keep_their_neighbours(shapes, client) -> None:
    images = sorted((shapes["data"] / "images").iterdir())
    for path in images[::30]:
        upload = client.post(
            "/search/image", files={"file": (path.name, path.read_bytes(), "image/jpeg")}
        )
        assert upload.status_code == 200, upload.text
        hits = upload.json()["results"]
        assert len(hits) >= 10 and hits[0]["path"] == str(path.resolve())
        similar = client.get(f"/images/{hits[0]['id']}/similar", params={"k": 50}).json()
        assert len(similar["results"]) >= 10
        assert similar["results"][0]["id"] == hits[0]["id"]


def test_absent_things_answer_empty_with_a_way_out(client) -> None:
    got = post_search(client, text="a giraffe eating leaves")
    assert got["results"] == [] and got["cut_off"] is True
    assert got["notice"] and not re.search(r"\d", got["notice"])  # no raw threshold
    closest = post_search(client, text="a giraffe eating leaves", cutoff=False)
    assert len(closest["results"]) == 20 and not closest["cut_off"]


def test_captions_belong_to_their_hits(shapes, client) -> None:
    """Each hit's caption is the one its own embedding gives (ClipCap reads vectors)."""
    from indexer.captioners.clipcap import ClipCapCaptioner
    from indexer.home import Home
    from indexer.settings import Settings

    hits = post_search(client, text="a shape", k=100, cutoff=False, captions=True)["results"]
    assert len(hits) == 100
    settings = Settings()
    home = Home(settings)
    model = home.model_row(client.get("/ready").json()["model"])
    assert model is not None
    ids, vecs = home.stored_vectors(model.id, model.dim, np.asarray([h["id"] for h in hits]))
    own = dict(
        zip(
            ids.tolist(),
            ClipCapCaptioner(shapes["captioner"]).caption_embeddings(vecs),
            strict=True,
        )
    )
    wrong = [h for h in hits if h["caption"] != own[h["id"]]]
    assert not wrong, wrong[:3]
    truth = _attributes(shapes["data"])
    named = sum(truth[h["path"]]["shape"] in (h["caption"] or "").split() for h in hits)
    assert named >= 70, named
