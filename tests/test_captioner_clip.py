"""A ClipCap captioner reads one CLIP's embeddings: checked at load, its captions kept per CLIP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.server import create_app
from indexer.captioners.base import load_captioner
from indexer.captioners.clipcap import CONFIG_NAME
from indexer.db import Caption, Image
from indexer.errors import ModelUnavailable
from indexer.home import Home
from indexer.settings import Settings
from tests.assets.tiny_models import (
    make_synthetic_dataset,
    materialize_tiny_captioner,
    materialize_tiny_clip,
)
from tests.helpers import run_cli

TINY_KEY = "pixsearch-tiny-clip/pixsearch-tiny-clip.pt"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("clipcheck")
    config, checkpoint = materialize_tiny_clip(base / "clip")
    # The same architecture with other weights (here: a copy) is another embedding space.
    other = checkpoint.with_name("pixsearch-tiny-clip-b.pt")
    shutil.copyfile(checkpoint, other)
    data = make_synthetic_dataset(base / "shapes", seed=1234, count=12)
    return {"config": config, "checkpoint": checkpoint, "other": other, "images": data / "images"}


def _captioner(folder: Path, **config: object) -> Path:
    """A copy of the trained ClipCap with these config values changed."""
    materialize_tiny_captioner(folder)
    raw = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**raw, **config}))
    return folder


@pytest.fixture
def trained_env(env, assets, monkeypatch) -> dict[str, Path]:
    monkeypatch.setenv("PIXSEARCH_MODEL", str(assets["config"]))
    monkeypatch.setenv("PIXSEARCH_PRETRAINED", str(assets["checkpoint"]))
    monkeypatch.delenv("PIXSEARCH_DEDUPE_THRESHOLD")
    return assets


@pytest.mark.parametrize(
    ("trained_for", "ok"),
    [
        ("pixsearch-tiny-clip", True),  # the architecture: any weights of it
        (TINY_KEY, True),  # architecture and weights, as the encoder's key names them
        ("pixsearch-tiny-clip/other-weights.pt", False),
        ("ViT-B-32", False),
        ("pixsearch-tiny", False),
    ],
)
def test_load_captioner_checks_the_clip(tmp_path: Path, trained_for: str, ok: bool) -> None:
    folder = _captioner(tmp_path / "cap", clip_model=trained_for)
    if ok:
        assert load_captioner(str(folder), clip_model=TINY_KEY, clip_dim=64) is not None
        return
    with pytest.raises(ModelUnavailable) as err:
        load_captioner(str(folder), clip_model=TINY_KEY, clip_dim=64)
    assert str(err.value).startswith(
        f"captioner {folder} was trained for CLIP {trained_for}, but pixsearch uses {TINY_KEY};"
    )


def test_same_name_but_another_dimension_is_refused(tmp_path: Path) -> None:
    folder = _captioner(tmp_path / "cap")
    with pytest.raises(ModelUnavailable, match=r"\(64-d\), but pixsearch uses .* \(512-d\)"):
        load_captioner(str(folder), clip_model=TINY_KEY, clip_dim=512)


def test_index_captions_refuses_a_captioner_for_another_clip(
    trained_env, tmp_path: Path, monkeypatch, capsys
) -> None:
    folder = _captioner(tmp_path / "vitb32-cap", clip_model="ViT-B-32/laion2b_s34b_b79k")
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", str(folder))
    res = run_cli(capsys, "index", "--captions", str(trained_env["images"]))
    assert res.code == 1 and res.err.count("\n") == 1, res.err
    assert "Traceback" not in res.err
    assert (
        f"captioner {folder} was trained for CLIP ViT-B-32/laion2b_s34b_b79k, "
        f"but pixsearch uses {TINY_KEY}"
    ) in res.err
    assert not Home(Settings()).exists()  # refused before any indexing


def test_service_runs_without_captions_and_says_why(
    trained_env, tmp_path: Path, monkeypatch, capsys
) -> None:
    assert run_cli(capsys, "index", str(trained_env["images"])).code == 0
    folder = _captioner(tmp_path / "vitb32-cap", clip_model="ViT-B-32")
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", str(folder))
    with TestClient(create_app()) as c:
        assert c.get("/ready").json()["captioner"] is None
        res = c.post("/search", json={"text": "a red circle", "k": 3, "captions": True})
    assert res.status_code == 200
    body = res.json()
    assert len(body["results"]) == 3 and {h["caption"] for h in body["results"]} == {None}
    assert "was trained for CLIP ViT-B-32, but pixsearch uses" in body["notice"]
    with Home(Settings()).session() as s:
        assert list(s.scalars(select(Caption))) == []


def test_captions_are_kept_per_clip_model(trained_env, tmp_path: Path, monkeypatch, capsys) -> None:
    """Two CLIP models in one home: each gets ClipCap captions of its own embeddings."""
    folder = _captioner(tmp_path / "tiny_captioner")
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", str(folder))
    images = str(trained_env["images"])
    assert run_cli(capsys, "index", "--captions", images).code == 0
    monkeypatch.setenv("PIXSEARCH_PRETRAINED", str(trained_env["other"]))
    assert run_cli(capsys, "index", "--captions", images).code == 0
    with Home(Settings()).session() as s:
        keys = [c.captioner for c in s.scalars(select(Caption))]
    assert sorted(set(keys)) == [
        "clipcap:tiny_captioner@pixsearch-tiny-clip/pixsearch-tiny-clip-b.pt",
        f"clipcap:tiny_captioner@{TINY_KEY}",
    ]
    assert len(keys) == 2 * len(_image_paths()) == 24
    # Search with the second model reads that model's stored captions: none made again.
    with TestClient(create_app()) as c:
        body = c.post("/search", json={"text": "a shape", "k": 12, "captions": True}).json()
    assert len(body["results"]) == 12 and all(h["caption"] for h in body["results"])
    with Home(Settings()).session() as s:
        assert len(list(s.scalars(select(Caption)))) == 24


def _image_paths() -> list[str]:
    with Home(Settings()).session() as s:
        return list(s.scalars(select(Image.path)))
