"""Meaning, not plumbing: a tiny CLIP and ClipCap captioner trained on synthetic shapes.

The models (tests/assets, rebuilt by scripts/train_tiny_*.py) never saw seed 1234.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from tests.assets.tiny_models import (
    TINY_CAPTIONER_DIR,
    make_synthetic_dataset,
    materialize_tiny_captioner,
    materialize_tiny_clip,
)
from tests.helpers import run_cli

pytestmark = pytest.mark.skipif(
    not (TINY_CAPTIONER_DIR / "clipcap_config.json").is_file(),
    reason="the tiny trained models are not built",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trained")
    config, checkpoint = materialize_tiny_clip(base / "clip")
    captioner = materialize_tiny_captioner(base / "captioner")
    data = make_synthetic_dataset(base / "shapes", seed=1234, count=200)
    return {"config": config, "checkpoint": checkpoint, "captioner": captioner, "data": data}


@pytest.fixture
def trained_env(trained, env, monkeypatch) -> dict[str, Path]:
    monkeypatch.setenv("PIXSEARCH_MODEL", str(trained["config"]))
    monkeypatch.setenv("PIXSEARCH_PRETRAINED", str(trained["checkpoint"]))
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", str(trained["captioner"]))
    monkeypatch.delenv("PIXSEARCH_DEDUPE_THRESHOLD")  # real models use the default
    return trained


def _attributes(data: Path) -> dict[str, dict[str, str]]:
    with open(data / "attributes.csv", newline="") as fh:
        return {str((data / r["path"]).resolve()): r for r in csv.DictReader(fh)}


def test_eval_recall_and_captions(trained_env, capsys) -> None:
    res = run_cli(capsys, "eval", str(trained_env["data"]), "--json")
    assert res.code == 0, res.err
    report = res.json()
    assert (report["images"], report["queries"]) == (200, 400)
    assert report["text_to_image"]["recall@1"] >= 0.8, report
    assert report["text_to_image"]["recall@10"] >= report["text_to_image"]["recall@1"]
    modes = report["by_rerank"]
    assert set(modes) == {"none", "standard", "generative"}
    assert (
        modes["generative"]["text_to_image"]["recall@1"]
        >= modes["standard"]["text_to_image"]["recall@1"]
    )
    assert report["image_to_text"]["recall@10"] >= 0.8
    assert report["captions"]["bleu@4"] > 0.3 and report["captions"]["cider"] > 0.5


def test_similar_finds_the_same_shape_and_colour(trained_env, capsys) -> None:
    data = trained_env["data"]
    assert run_cli(capsys, "index", str(data / "images")).code == 0
    truth = _attributes(data)
    same: Counter[str] = Counter()
    total = 0
    for path in sorted(truth)[:40]:
        hits = run_cli(capsys, "similar", path, "-k", "4", "--json").json()
        assert hits[0]["path"] == path
        for hit in hits[1:]:
            other, mine = truth[hit["path"]], truth[path]
            for attr in ("shape", "colour", "background", "size"):
                same[attr] += other[attr] == mine[attr]
            same["shape+colour"] += (other["shape"], other["colour"]) == (
                mine["shape"],
                mine["colour"],
            )
            total += 1
    rate = {k: v / total for k, v in same.items()}
    # Pictures also differ in background, size and position, which the model sees too; so
    # the neighbours are judged against chance (shape 1/5, colour 1/8, both 1/40): a swapped
    # colour channel or a broken preprocessing falls back to chance.
    assert rate["shape"] >= 0.5 and rate["colour"] >= 0.33, rate
    assert rate["shape+colour"] >= 0.15, rate


def test_captions_name_the_colour_and_shape(trained_env, capsys) -> None:
    from fastapi.testclient import TestClient

    from api.server import create_app

    data = trained_env["data"]
    assert run_cli(capsys, "index", "--captions", str(data / "images")).code == 0
    truth = _attributes(data)
    with TestClient(create_app()) as client:
        hits = client.post(
            "/search",
            json={"text": "a shape", "k": 200, "cutoff": False, "rerank": False, "captions": True},
        ).json()["results"]
    assert len(hits) == 200
    right = Counter()
    for hit in hits:
        words = (hit["caption"] or "").split()
        attrs = truth[hit["path"]]
        # The shape's colour is the word before the shape ("a large red circle on ...").
        right["shape"] += attrs["shape"] in words
        right["colour"] += (
            attrs["colour"] in words[: words.index(attrs["shape"])]
            if attrs["shape"] in words
            else False
        )
    assert right["shape"] / 200 >= 0.7 and right["colour"] / 200 >= 0.7, right
