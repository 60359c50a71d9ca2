"""Indexing and searching through the command line, end to end, with the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_photos, run_cli

SUMMARY_KEYS = {
    "scanned",
    "added",
    "updated",
    "unchanged",
    "moved",
    "removed",
    "failed",
    "seconds",
    "images_per_second",
}
HIT_KEYS = {"id", "path", "score", "width", "height", "taken_at"}


def test_index_then_search_and_similar(env: dict[str, str], photos: Path, capsys) -> None:
    res = run_cli(capsys, "index", str(photos), "--json")
    assert res.code == 0, res.err
    summary = res.json()
    assert set(summary) == SUMMARY_KEYS
    assert (summary["scanned"], summary["added"], summary["failed"]) == (12, 12, [])

    hits = run_cli(capsys, "search", "--no-cutoff", "a red circle", "-k", "5", "--json").json()
    assert len(hits) == 5 and all(set(h) == HIT_KEYS for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(Path(h["path"]).parent == photos for h in hits)
    assert {(h["width"], h["height"]) for h in hits} == {(160, 120)}

    target = photos / "img_0003.jpg"
    by_path = run_cli(capsys, "similar", "--no-cutoff", str(target), "-k", "3", "--json").json()
    assert by_path[0]["path"] == str(target) and by_path[0]["score"] == pytest.approx(1, abs=1e-4)
    by_id = run_cli(
        capsys, "similar", "--no-cutoff", str(by_path[0]["id"]), "-k", "3", "--json"
    ).json()
    assert by_id == by_path


def test_similar_to_an_image_that_is_not_indexed(env, photos: Path, tmp_path: Path, capsys) -> None:
    run_cli(capsys, "index", str(photos))
    # A copy elsewhere is not indexed: it is embedded on the fly and finds its original.
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((photos / "img_0005.jpg").read_bytes())
    hits = run_cli(capsys, "similar", "--no-cutoff", str(outside), "-k", "1", "--json").json()
    assert hits[0]["path"] == str(photos / "img_0005.jpg")
    assert hits[0]["score"] > 0.99


def test_readable_table_without_json(env, photos: Path, capsys) -> None:
    out = run_cli(capsys, "index", str(photos)).out
    assert "12 scanned: 12 added" in out
    table = run_cli(capsys, "search", "--no-cutoff", "sunset", "-k", "2").out.splitlines()
    assert table[0].split()[:2] == ["score", "id"] and len(table) == 3


def test_status_and_export(env, photos: Path, tmp_path: Path, capsys) -> None:
    run_cli(capsys, "index", str(photos))
    info = run_cli(capsys, "status", "--json").json()
    assert info["images"] == 12 and info["indexed_with_model"] == 12
    assert info["home"] == env["PIXSEARCH_HOME"] and info["index_bytes"] > 0
    assert info["model"].startswith("pixsearch-test-tiny/")

    out = tmp_path / "vectors.npz"
    assert run_cli(capsys, "export", "--out", str(out)).code == 0
    data = np.load(out)
    assert data["embeddings"].dtype == np.float32 and data["embeddings"].shape == (12, 32)
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-5)
    assert sorted(data["paths"]) == sorted(str(p) for p in photos.iterdir())
    assert len(set(data["ids"].tolist())) == 12


def test_empty_home_gives_one_line_error(env, capsys) -> None:
    res = run_cli(capsys, "search", "--no-cutoff", "anything")
    assert res.code == 1
    assert res.err.count("\n") == 1 and "pixsearch index" in res.err


def test_flags_override_environment(env, photos: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other-home"
    assert run_cli(capsys, "--home", str(other), "index", str(photos)).code == 0
    assert (other / "pixsearch.db").exists()
    assert not Path(env["PIXSEARCH_HOME"]).exists()


def test_more_photos_than_a_batch(env, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "many"
    make_photos(folder, 30, fmt="PNG")
    summary = run_cli(capsys, "index", str(folder), "--json").json()
    assert summary["added"] == 30
    assert run_cli(capsys, "status", "--json").json()["indexed_with_model"] == 30
