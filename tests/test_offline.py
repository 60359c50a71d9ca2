"""Without network: what still works, and what says, in one line, that it did not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.assets.tiny_models import make_synthetic_dataset, materialize_tiny_clip
from tests.helpers import run_cli


@pytest.fixture
def shapes_env(env, tmp_path: Path, monkeypatch) -> Path:
    """The tiny trained CLIP, and a small captioned data set it never saw."""
    config, checkpoint = materialize_tiny_clip(tmp_path / "clip")
    monkeypatch.setenv("PIXSEARCH_MODEL", str(config))
    monkeypatch.setenv("PIXSEARCH_PRETRAINED", str(checkpoint))
    return make_synthetic_dataset(tmp_path / "shapes", seed=1234, count=30)


def test_eval_without_the_captioner_reports_retrieval_and_a_notice(
    shapes_env: Path, monkeypatch, capsys
) -> None:
    # A captioner given by hub id, as the default is, offline and never downloaded.
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", "pixsearch-tests/never-downloaded-captioner")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run_cli(capsys, "eval", str(shapes_env), "--json")
    assert res.code == 0, res.err
    report = res.json()
    assert (report["images"], report["queries"]) == (30, 60)
    assert report["text_to_image"]["recall@10"] >= 0.8, report
    assert set(report["by_rerank"]) == {"none", "standard"}
    assert "captions" not in report
    assert report["notice"].startswith(
        "captions skipped: cannot load captioner 'pixsearch-tests/never-downloaded-captioner'"
    )

    res = run_cli(capsys, "eval", str(shapes_env))
    assert res.code == 0, res.err
    assert "text->image (standard)" in res.out
    assert "\nnotice: captions skipped: cannot load captioner" in res.out


def test_eval_without_a_captioner_has_no_notice(shapes_env: Path, capsys) -> None:
    res = run_cli(capsys, "eval", str(shapes_env), "--json")
    assert res.code == 0, res.err
    assert "notice" not in res.json() and "captions" not in res.json()
