"""The encoder: fidelity to open_clip's own float32 pipeline, precision choice, errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.encoder import ClipEncoder, cpu_has_bf16
from indexer.errors import ModelUnavailable
from indexer.imageio import DRAFT_OVERSAMPLE, decode
from tests.helpers import ROOT, picture, run_subprocess


def _photo_bytes(seed: int, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    picture(seed, size).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(160, 120), (1600, 1200)])
def test_embeddings_match_open_clip_float32(tiny_model, size: tuple[int, int]) -> None:
    import open_clip
    import torch

    config, checkpoint = tiny_model
    ref_model, _, ref_pre = open_clip.create_model_and_transforms(
        config.stem, pretrained=str(checkpoint)
    )
    ref_model.eval()
    files = [_photo_bytes(seed, size) for seed in range(8)]
    with torch.no_grad():
        ref = ref_model.encode_image(
            torch.stack([ref_pre(Image.open(io.BytesIO(f))) for f in files])
        )
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()

    enc = ClipEncoder(str(config), str(checkpoint))  # auto precision, as users get it
    s = enc.preprocess.size
    ours = enc.embed_pixels(
        np.stack(
            [
                enc.prepare(decode(f, max_pixels=10**9, min_side=s * DRAFT_OVERSAMPLE)[0])
                for f in files
            ]
        )
    )
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    fidelity = (ours * ref).sum(axis=1)
    assert fidelity.min() >= 0.99, fidelity
    # A random tiny model puts all pictures close together, so also demand that our error
    # is small next to the distance between different pictures: a swapped colour channel
    # or a wrong normalisation fails this.
    cross = ref @ ref.T
    nearest_other = (1 - cross[~np.eye(len(files), dtype=bool)]).min()
    assert (1 - fidelity).max() < 0.25 * nearest_other, (fidelity, nearest_other)


def test_auto_precision_is_measured_on_the_cpu_and_fp32_can_be_forced(tiny_model) -> None:
    enc = ClipEncoder(str(tiny_model[0]), str(tiny_model[1]), device="cpu")
    trials = {t.precision: t for t in enc.choice.trials}
    assert enc.precision in trials and trials[enc.precision].refused is None
    assert (trials["bf16"].refused is None) == cpu_has_bf16()
    forced = ClipEncoder(str(tiny_model[0]), str(tiny_model[1]), device="cpu", precision="fp32")
    assert (forced.precision, forced.choice.reason) == ("fp32", "forced by PIXSEARCH_PRECISION")


def test_texts_and_images_share_one_unit_space(tiny_model) -> None:
    enc = ClipEncoder(str(tiny_model[0]), str(tiny_model[1]))
    texts = enc.embed_texts(["a dog", "a beach at sunset", "a dog"])
    images = enc.embed_images([picture(1), picture(2, (50, 300))])
    assert texts.shape == (3, 32) and images.shape == (2, 32)
    assert texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([texts, images]), axis=1), 1, atol=1e-5)
    assert float(texts[0] @ texts[2]) == pytest.approx(1, abs=1e-5)
    assert float(texts[0] @ texts[1]) < 0.999


def test_missing_checkpoint_file(tiny_model) -> None:
    enc = ClipEncoder(str(tiny_model[0]), "/nowhere/weights.pt")
    with pytest.raises(ModelUnavailable, match="does not exist"):
        enc.load()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("network", ["offline mode", "unreachable hub"])
def test_no_network_is_one_clear_line_and_writes_nothing(
    tmp_path: Path, photos: Path, network: str
) -> None:
    home = tmp_path / "home"
    env = {
        "PIXSEARCH_HOME": str(home),
        "PIXSEARCH_MODEL": "ViT-B-32",
        "PIXSEARCH_PRETRAINED": "laion2b_s34b_b79k",
        "HF_HOME": str(tmp_path / "hf"),
    }
    if network == "offline mode":
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    else:
        # Not offline, and the hub refuses connections: the hub client alone would retry each
        # file five times with back-off, 46 warning lines and ~50 s before the same failure.
        env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    res = run_subprocess("index", str(photos), env=env)
    assert res.code == 1
    assert res.err.count("\n") == 1, res.err
    assert res.err.startswith(
        "pixsearch: error: cannot download weights 'laion2b_s34b_b79k' for model 'ViT-B-32'"
    )
    assert ("HF_HUB_OFFLINE" if network == "offline mode" else "no network") in res.err
    assert "PIXSEARCH_PRETRAINED=" in res.err
    assert not home.exists()


def test_unknown_pretrained_tag(tiny_model) -> None:
    enc = ClipEncoder("ViT-B-32", "no_such_tag")
    with pytest.raises(ModelUnavailable, match=r"unknown pretrained tag 'no_such_tag'.*openai"):
        enc.load()


def test_a_file_that_is_not_a_checkpoint(tiny_model, tmp_path: Path) -> None:
    text = tmp_path / "weights.pt"
    text.write_text("<html>404 Not Found</html>\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_model[1].read_bytes()[:50_000])
    for bad in (text, truncated):
        enc = ClipEncoder(str(tiny_model[0]), str(bad))
        with pytest.raises(ModelUnavailable) as err:
            enc.load()
        assert f"checkpoint file {bad} is not a model checkpoint or is damaged" in str(err.value)
        assert "\n" not in str(err.value)


def test_a_checkpoint_of_another_architecture(tiny_model, tmp_path: Path) -> None:
    from tests.assets.tiny_models import materialize_tiny_clip

    _, other = materialize_tiny_clip(tmp_path)  # a ConvNeXt image tower, not a ViT
    enc = ClipEncoder(str(tiny_model[0]), str(other))
    with pytest.raises(ModelUnavailable) as err:
        enc.load()
    message = str(err.value)
    assert message.startswith(f"checkpoint {other} does not match model 'pixsearch-test-tiny':")
    assert "missing keys (e.g. " in message and "unexpected keys (e.g. " in message
    assert "PIXSEARCH_MODEL" in message and "\n" not in message


def test_help_is_instant_because_nothing_heavy_is_imported() -> None:
    code = (
        "import sys; from api.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'open_clip', 'faiss', 'sqlalchemy', 'PIL'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert out.strip().endswith("[]"), out
