"""Packed CPU kernels: same answers as plain torch, layer by layer and for the whole model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from indexer.encoder import ClipEncoder
from indexer.packed import kernels_work, pack_for_cpu

pytestmark = pytest.mark.skipif(
    not kernels_work(torch.float32), reason="oneDNN packed kernels not available here"
)


def _attention(batch_first: bool) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    return nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()


def _packed_copy(module: nn.Module) -> nn.Module:
    holder = nn.Sequential(module)
    assert pack_for_cpu(holder) >= 1
    return holder[0]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "case", ["self", "causal-float", "bool-mask", "3d-mask", "padding", "cross", "weights"]
)
def test_attention_matches_torch(batch_first: bool, case: str) -> None:
    mha = _attention(batch_first)
    x_shape = (3, 7, 32) if batch_first else (7, 3, 32)
    x = torch.randn(x_shape)
    y = torch.randn((3, 5, 32) if batch_first else (5, 3, 32))
    kwargs: dict = {"need_weights": False}
    query = key = value = x
    if case == "causal-float":
        kwargs["attn_mask"] = torch.full((7, 7), float("-inf")).triu(1)
    elif case == "bool-mask":
        kwargs["attn_mask"] = torch.rand(7, 7) > 0.7
        kwargs["attn_mask"].fill_diagonal_(False)
    elif case == "3d-mask":
        kwargs["attn_mask"] = torch.randn(3 * 4, 7, 7)
    elif case == "padding":
        lengths = torch.tensor([7, 5, 6])
        kwargs["key_padding_mask"] = torch.arange(7)[None, :] >= lengths[:, None]
    elif case == "cross":
        key = value = y
    elif case == "weights":
        kwargs["need_weights"] = True
    with torch.no_grad():
        want_out, want_w = mha(query, key, value, **kwargs)
        packed = _packed_copy(mha)
        got_out, got_w = packed(query, key, value, **kwargs)
    torch.testing.assert_close(got_out, want_out, atol=1e-5, rtol=1e-4)
    if case == "weights":
        torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-4)
    else:
        assert got_w is None and want_w is None


def test_linear_then_gelu_runs_fused() -> None:
    torch.manual_seed(0)
    for approximate in ("none", "tanh"):
        mlp = nn.Sequential(nn.Linear(16, 64), nn.GELU(approximate), nn.Linear(64, 16)).eval()
        x = torch.randn(2, 9, 16)
        with torch.no_grad():
            want = mlp(x)
            assert pack_for_cpu(mlp) == 2
            got = mlp(x)
        assert isinstance(mlp[1], nn.Identity)  # GELU now runs inside the first linear
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_packed_model_embeds_like_open_clip(tiny_model) -> None:
    """The whole CLIP model packed (images and texts) gives open_clip's own embeddings."""
    import open_clip

    config, checkpoint = tiny_model
    plain = open_clip.create_model(config.stem, pretrained=str(checkpoint)).eval()
    enc = ClipEncoder(str(config), str(checkpoint), device="cpu", precision="fp32").load()
    assert any(type(m).__name__ == "PackedLinear" for m in enc._model.modules())

    texts = ["a dog on a beach", "a red square", "sunset"]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(enc.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want_img = nn.functional.normalize(plain.encode_image((x - mean) / std), dim=-1)
        want_txt = nn.functional.normalize(plain.encode_text(open_clip.tokenize(texts)), dim=-1)
    np.testing.assert_allclose(enc.embed_pixels(pixels), want_img.numpy(), atol=1e-5)
    np.testing.assert_allclose(enc.embed_texts(texts), want_txt.numpy(), atol=1e-5)
