"""The demo collection: photo-like metadata that reads back, and pictures the demo model knows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from indexer.demo import make_demo_photos, plan_demo
from indexer.imageio import decode


def test_plan_looks_like_a_photo_collection() -> None:
    plan = plan_demo(300, seed=0)
    assert len({p.path for p in plan}) == 300
    undated = sum(p.taken_at is None for p in plan)
    assert 15 <= undated <= 45  # about one in ten has no capture date
    dated = [p.taken_at for p in plan if p.taken_at is not None]
    assert len({d.year for d in dated}) >= 5
    assert len({(d.year, d.month) for d in dated}) >= 40
    assert len({p.model for p in plan if p.model}) >= 5
    assert 30 <= sum(p.gps is not None for p in plan) <= 200
    formats = Counter(p.format for p in plan)
    assert set(formats) == {"jpeg", "png", "webp"} and min(formats.values()) >= 10
    assert len({(p.width, p.height) for p in plan}) >= 8
    assert any(p.height > p.width for p in plan)  # portraits too
    assert plan_demo(300, seed=0) == plan
    assert plan_demo(300, seed=1) != plan


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("demo")
    return folder, make_demo_photos(folder, n=60, seed=3)


def test_written_files_carry_the_planned_metadata(written: tuple[Path, list[Path]]) -> None:
    folder, paths = written
    plan = plan_demo(60, seed=3)
    assert paths == [folder / p.path for p in plan]
    assert any(p.taken_at is None for p in plan) and any(p.gps for p in plan)
    for photo, path in zip(plan, paths, strict=True):
        _, meta = decode(path.read_bytes(), max_pixels=10**8)
        assert (meta.width, meta.height, meta.format) == (photo.width, photo.height, photo.format)
        assert meta.taken_at == photo.taken_at
        assert (meta.camera_make, meta.camera_model) == (photo.make, photo.model)
        if photo.gps is None:
            assert meta.gps_lat is None and meta.gps_lon is None
        else:
            assert meta.gps_lat == pytest.approx(photo.gps[0], abs=1e-4)
            assert meta.gps_lon == pytest.approx(photo.gps[1], abs=1e-4)
        # File times follow the capture dates, so undated photos still sort somewhere.
        assert path.stat().st_mtime == pytest.approx(photo.file_time.timestamp(), abs=1)


def test_rewriting_gives_the_same_files(written: tuple[Path, list[Path]], tmp_path: Path) -> None:
    _, paths = written
    again = make_demo_photos(tmp_path, n=60, seed=3)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_the_tiny_clip_recognises_the_pictures(
    written: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Each picture's description finds that picture first among the 60 (any size, format)."""
    import numpy as np

    from indexer.encoder import ClipEncoder
    from indexer.imageio import decode
    from tests.assets.tiny_models import materialize_tiny_clip

    _, paths = written
    plan = plan_demo(60, seed=3)
    config, checkpoint = materialize_tiny_clip(tmp_path)
    encoder = ClipEncoder(str(config), str(checkpoint))
    images = [decode(p.read_bytes(), max_pixels=10**8)[0] for p in paths]
    scores = encoder.embed_texts([p.caption for p in plan]) @ encoder.embed_images(images).T
    assert np.mean(scores.argmax(axis=1) == np.arange(60)) >= 0.85
