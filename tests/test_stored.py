"""Vectors in the database are float16: half the bytes, the same search."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import stored
from indexer.encoder import ClipEncoder
from tests.helpers import make_photos, run_cli


def test_vectors_are_stored_in_half_the_bytes_and_read_back_faithfully(
    env: dict[str, str],
    tiny_model: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PIXSEARCH_PRECISION", "fp32")  # compared with float32 below
    files = make_photos(tmp_path / "photos", 8, fmt="PNG")
    assert run_cli(capsys, "index", str(tmp_path / "photos")).code == 0
    db = Path(env["PIXSEARCH_HOME"]) / "pixsearch.db"
    with sqlite3.connect(db) as conn:
        sizes = {n for (n,) in conn.execute("SELECT length(vector) FROM embeddings")}
    assert sizes == {32 * 2}  # 32 dimensions, two bytes each

    out = tmp_path / "vectors.npz"
    assert run_cli(capsys, "export", "--out", str(out)).code == 0
    data = np.load(out)
    got = dict(zip(data["paths"].tolist(), data["embeddings"], strict=True))
    enc = ClipEncoder(str(tiny_model[0]), str(tiny_model[1]), device="cpu", precision="fp32")
    want = enc.embed_images([Image.open(f) for f in files])
    cosines = [float(got[str(f)] @ w) for f, w in zip(files, want, strict=True)]
    assert min(cosines) > 0.9999
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-5)

    # A photo finds itself first; a copy not indexed (embedded in float32) finds it too.
    copy = tmp_path / "copy.png"
    copy.write_bytes(files[3].read_bytes())
    for target in (files[3], copy):
        hits = run_cli(capsys, "similar", "--no-cutoff", str(target), "-k", "1", "--json").json()
        assert isinstance(hits, list)
        assert hits[0]["path"] == str(files[3]) and hits[0]["score"] > 0.9999


def test_rows_written_before_float16_read_as_they_were() -> None:
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((5, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    old = [v.tobytes() for v in vecs]  # float32, as pixsearch stored them before
    new = [stored.encode(v) for v in vecs]
    assert len(new[0]) * 2 == len(old[0])
    np.testing.assert_array_equal(stored.decode(old, 16), vecs)
    half = stored.decode(new, 16)
    assert (np.einsum("ij,ij->i", half, vecs) > 0.9999).all()
    mixed = stored.decode([old[0], new[1], old[2], new[3], new[4]], 16)
    np.testing.assert_array_equal(mixed[[0, 2]], vecs[[0, 2]])
    np.testing.assert_array_equal(mixed[[1, 3, 4]], half[[1, 3, 4]])
    assert stored.decode_one(old[1], 16).tolist() == vecs[1].tolist()
    assert stored.decode_one(new[1], 16).tolist() == half[1].tolist()
