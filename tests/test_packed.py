"""Packed CPU kernels: same answers as plain torch, layer by layer and for the whole model."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from indexer.encoder import ClipEncoder, cpu_has_bf16
from indexer.packed import kernels_work, pack_for_cpu

# Only a torch built without oneDNN lacks the kernels; kernels that exist but disagree with
# torch must fail these tests, never skip them.
pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)"
)


def test_the_kernels_agree_with_torch_here() -> None:
    assert kernels_work(torch.float32) is True
    if cpu_has_bf16():  # elsewhere bf16 is emulated, and may legitimately be refused
        assert kernels_work(torch.bfloat16) is True


def _wrong_linear(monkeypatch: pytest.MonkeyPatch, attr: str, algorithm: str) -> None:
    """Make the packed linear kernel slightly wrong for one fused activation only."""
    ops = torch.ops.mkldnn
    real = ops._linear_pointwise

    def wrong(x, w, b, a, scalars, alg):  # type: ignore[no-untyped-def]
        out = real(x, w, b, a, scalars, alg)
        return out + 1e-3 if (a, alg) == (attr, algorithm) else out

    monkeypatch.setattr(ops, "_linear_pointwise", wrong)


def _wrong_attention(monkeypatch: pytest.MonkeyPatch, masked: bool) -> None:
    """Make the fused attention kernel slightly wrong, with a mask or without one only."""
    real = F.scaled_dot_product_attention

    def wrong(q, k, v, attn_mask=None, **kwargs):  # type: ignore[no-untyped-def]
        out = real(q, k, v, attn_mask=attn_mask, **kwargs)
        return out + 1e-3 if (attn_mask is not None) == masked else out

    monkeypatch.setattr(F, "scaled_dot_product_attention", wrong)


@pytest.mark.parametrize(
    ("broken", "named"),
    [
        (lambda mp: _wrong_linear(mp, "none", ""), "linear"),
        (lambda mp: _wrong_linear(mp, "gelu", "none"), "linear + GELU (none)"),
        (lambda mp: _wrong_linear(mp, "gelu", "tanh"), "linear + GELU (tanh)"),
        (lambda mp: _wrong_attention(mp, masked=False), "attention"),
        (lambda mp: _wrong_attention(mp, masked=True), "attention with a causal mask"),
    ],
    ids=["linear", "gelu", "gelu-tanh", "attention", "masked-attention"],
)
def test_a_wrong_kernel_leaves_the_model_unpacked(
    broken, named: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken(monkeypatch)
    assert kernels_work(torch.float32) is False
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.GELU("tanh"), nn.Linear(32, 32), nn.MultiheadAttention(32, 4)
    ).eval()
    with caplog.at_level(logging.WARNING, logger="indexer.packed"):
        assert pack_for_cpu(model) == 0
    assert [type(m) for m in model] == [nn.Linear, nn.GELU, nn.Linear, nn.MultiheadAttention]
    assert f"packed CPU kernel for {named} disagrees" in caplog.text


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
    assert any(type(m).__name__ == "PackedLinear" for m in enc._loaded.runner.model.modules())

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
