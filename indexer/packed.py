"""CPU inference rewrites: linear layers on weights packed once for oneDNN.

A plain `nn.Linear` on CPU hands its weight to the GEMM library, which re-lays it out into
its blocked format on every call. Packing each weight once at load time, fusing GELU into the
linear before it, and running attention through `scaled_dot_product_attention` made ViT-B-32
image encoding ~17% faster in bf16 on a 2-core AVX-512 BF16 CPU (after which it runs at ~85% of
the measured GEMM peak), and small-batch text encoding up to 2x faster
(benchmarks/bench_index.py, bench_query.py). These are the kernels torch.compile's CPU backend
itself emits after freezing, without its ~15-30 s compile.

The rewrite changes no weights; `pack_for_cpu` first checks every packed operation (linear,
linear with either GELU, attention with and without a mask) against plain torch in the model's
dtype, and leaves the model as it is, with a warning naming the operation, if the kernels are
missing or any of them disagrees.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


def _modules() -> tuple[type, type]:
    """The module classes, built on first use so that importing this file stays cheap."""
    global _PackedLinear, _PackedAttention
    if _PackedLinear is None:
        _PackedLinear, _PackedAttention = _build_classes()
    return _PackedLinear, _PackedAttention


_PackedLinear: Any = None
_PackedAttention: Any = None


def _build_classes() -> tuple[type, type]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    ops = torch.ops.mkldnn

    class PackedLinear(nn.Module):
        """`nn.Linear` (optionally followed by GELU) on a weight packed once."""

        def __init__(
            self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None = None
        ) -> None:
            super().__init__()
            self.in_features = int(weight.shape[1])
            self.out_features = int(weight.shape[0])
            # Plain attributes, not parameters: the packed layout must not be cast or saved.
            self.packed = ops._reorder_linear_weight(weight.detach(), None)
            self.bias = None if bias is None else bias.detach().clone()
            # Models read `.weight.dtype`/`.device` (open_clip's get_cast_dtype); an empty
            # tensor answers those, and any arithmetic on it fails loudly instead of silently.
            self.weight = weight.new_empty(0)
            self.attr, self.algorithm = ("gelu", gelu) if gelu else ("none", "")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lead = x.shape[:-1]
            flat = x.reshape(-1, self.in_features)
            out = ops._linear_pointwise(flat, self.packed, self.bias, self.attr, [], self.algorithm)
            return out.view(*lead, self.out_features)

        def extra_repr(self) -> str:
            fused = f", then {self.attr}" if self.attr != "none" else ""
            return f"in={self.in_features}, out={self.out_features}, packed{fused}"

    class PackedAttention(nn.Module):
        """`nn.MultiheadAttention` (inference) on packed projections and SDPA."""

        def __init__(self, mha: nn.MultiheadAttention) -> None:
            super().__init__()
            self.qkv = PackedLinear(mha.in_proj_weight, mha.in_proj_bias)
            self.out_proj = PackedLinear(mha.out_proj.weight, mha.out_proj.bias)
            self.num_heads = mha.num_heads
            self.embed_dim = mha.embed_dim
            self.batch_first = mha.batch_first

        def forward(
            self,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            key_padding_mask: torch.Tensor | None = None,
            need_weights: bool = True,
            attn_mask: torch.Tensor | None = None,
            average_attn_weights: bool = True,
            is_causal: bool = False,
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            batched = query.dim() == 3
            if not batched:
                query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if not self.batch_first:
                query, key, value = (t.transpose(0, 1) for t in (query, key, value))
            bsz, tgt, _ = query.shape
            src = key.shape[1]
            e = self.embed_dim
            h, d = self.num_heads, e // self.num_heads
            if query is key and key is value:  # self-attention: one GEMM
                q, k, v = self.qkv(query).view(bsz, tgt, 3, h, d).permute(2, 0, 3, 1, 4)
            else:
                # Cross-attention (rare in CLIP models) projects each input through the joint
                # weight and keeps its third, rather than holding the weight packed twice.
                kv = self.qkv(key)
                vv = kv if value is key else self.qkv(value)
                q = self.qkv(query)[..., :e].reshape(bsz, tgt, h, d).transpose(1, 2)
                k = kv[..., e : 2 * e].reshape(bsz, src, h, d).transpose(1, 2)
                v = vv[..., 2 * e :].reshape(bsz, src, h, d).transpose(1, 2)
            mask = _additive_mask(attn_mask, key_padding_mask, bsz, h, tgt, src, q.dtype)
            if need_weights:
                scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
                weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
                out = weights @ v
            else:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=is_causal and mask is None
                )
            out = self.out_proj(out.transpose(1, 2).reshape(bsz, tgt, self.embed_dim))
            if not self.batch_first:
                out = out.transpose(0, 1)
            if not batched:
                out = out.squeeze(1)
            if not need_weights:
                return out, None
            return out, (weights.mean(dim=1) if average_attn_weights else weights)

    return PackedLinear, PackedAttention


def _additive_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    bsz: int,
    heads: int,
    tgt: int,
    src: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """`nn.MultiheadAttention`'s masks (bool: True = masked; float: added) as one float mask."""
    import torch

    def as_float(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype).masked_fill_(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = as_float(attn_mask)
        if mask.dim() == 3:  # (batch * heads, tgt, src)
            mask = mask.view(bsz, heads, tgt, src)
    if key_padding_mask is not None:
        pad = as_float(key_padding_mask).view(bsz, 1, 1, src)
        mask = pad if mask is None else mask + pad
    return mask


def kernels_work(dtype: torch.dtype) -> bool:
    """Whether the packed kernels exist here and every packed operation agrees with plain
    torch in `dtype` (linear, linear with either GELU, attention with and without a mask)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        log.info("this torch build has no oneDNN: using plain torch")
        return False
    try:
        wrong = _disagreement(dtype)
    except (RuntimeError, AttributeError, TypeError, NotImplementedError) as exc:
        log.info("packed CPU kernels unavailable in %s (%s): using plain torch", dtype, exc)
        return False
    if wrong is not None:
        log.warning(
            "packed CPU kernel for %s disagrees with plain torch in %s: using plain torch",
            wrong,
            dtype,
        )
        return False
    return True


def _disagreement(dtype: torch.dtype) -> str | None:
    """The first packed operation whose answer in `dtype` differs from plain torch's (run in
    float32 on the same rounded weights and inputs), or None when all agree."""
    import copy

    import torch
    import torch.nn.functional as F
    from torch import nn

    packed_linear, packed_attention = _modules()
    # bf16 keeps 8 bits of mantissa: its products and sums drift by ~1e-2 at these sizes.
    tol = 1e-4 if dtype == torch.float32 else 3e-2

    def agree(got: torch.Tensor, want: torch.Tensor) -> bool:
        return bool(torch.allclose(got.float(), want, atol=tol, rtol=tol))

    # Seeded inside a fork: loading a model must not move the caller's random state.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        x = torch.randn(5, 3, 64).to(dtype)
        weight, bias = (torch.randn(96, 64) / 8).to(dtype), (torch.randn(96) / 8).to(dtype)
        plain = F.linear(x.float(), weight.float(), bias.float())
        if not agree(packed_linear(weight, bias)(x), plain):
            return "linear"
        for approximate in ("none", "tanh"):
            want = F.gelu(plain, approximate=approximate)
            if not agree(packed_linear(weight, bias, gelu=approximate)(x), want):
                return f"linear + GELU ({approximate})"
        # As open_clip's towers call it: batch first, no weights, a float causal mask in text.
        mha = nn.MultiheadAttention(64, 4, batch_first=True).eval().to(dtype)
        reference = copy.deepcopy(mha).float()
        packed = packed_attention(mha)
        causal = torch.full((3, 3), float("-inf")).triu(1)
        y = torch.randn(5, 4, 64).to(dtype)
        cases = {
            "attention": (x, x, None),
            "attention with a causal mask": (x, x, causal),
            "cross-attention": (x, y, None),
        }
        for name, (q, kv, mask) in cases.items():
            got, _ = packed(q, kv, kv, need_weights=False, attn_mask=mask)
            # need_weights=True: the reference takes torch's explicit softmax path, not the
            # fused kernel the packed module uses.
            want, _ = reference(
                q.float(), kv.float(), kv.float(), need_weights=True, attn_mask=mask
            )
            if not agree(got, want):
                return name
    return None


def pack_for_cpu(model: nn.Module) -> int:
    """Rewrite `model`'s linears and multi-head attentions in place for CPU inference.

    Returns how many modules were rewritten (0 when the kernels can't be used). The model
    must already be in eval mode, on the CPU, in its final dtype; it can't be trained after.
    """
    import torch

    first = next(model.parameters(), None)  # (not a list: that would keep every weight alive)
    if first is None or first.device.type != "cpu":
        return 0
    dtype = first.dtype
    del first
    if not kernels_work(dtype):
        return 0
    with torch.no_grad():
        count = _rewrite(model)
    return_freed_memory()
    log.debug("packed %d modules for CPU inference", count)
    return count


def return_freed_memory() -> None:
    """Hand the heap pages the unpacked weights held back to the OS (glibc only): otherwise
    they stay resident, ~0.18 GiB for ViT-B-32."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _rewrite(module: nn.Module) -> int:
    from torch import nn

    packed_linear, packed_attention = _modules()
    count = 0
    children = list(module.named_children())
    for i, (name, child) in enumerate(children):
        if isinstance(child, nn.MultiheadAttention) and _plain_attention(child):
            setattr(module, name, packed_attention(child))
            count += 1
        elif type(child) is nn.Linear:
            after = children[i + 1][1] if i + 1 < len(children) else None
            gelu = None
            # In a Sequential, Linear -> GELU runs as one fused kernel.
            if isinstance(module, nn.Sequential) and type(after) is nn.GELU:
                gelu = after.approximate
                setattr(module, children[i + 1][0], nn.Identity())
                children[i + 1] = (children[i + 1][0], nn.Identity())
            setattr(module, name, packed_linear(child.weight, child.bias, gelu=gelu))
            count += 1
        else:
            count += _rewrite(child)
    return count


def _plain_attention(mha: nn.MultiheadAttention) -> bool:
    """Attention with one joint input projection and none of the rarely used options."""
    return bool(
        mha._qkv_same_embed_dim
        and mha.in_proj_weight is not None
        and mha.bias_k is None
        and mha.bias_v is None
        and not mha.add_zero_attn
        and mha.embed_dim % mha.num_heads == 0
    )
