"""The ways to run a loaded CLIP model, one per precision: torch (fp32, bf16, fp16) and int8.

Each runner embeds prepared pictures (uint8, model size) and texts into unit-norm float32
rows; the encoder picks one (`indexer/precision.py` says which and why).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import ModelUnavailable
from indexer.types import Embeddings, Pixels

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Preprocess:
    """The model's own preprocessing, as open_clip configures it."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str

    @classmethod
    def of(cls, model: Any) -> Preprocess:
        """What `model` (an open_clip model) expects."""
        cfg = getattr(model.visual, "preprocess_cfg", {})
        size = cfg.get("size", model.visual.image_size)
        size = size[0] if isinstance(size, tuple | list) else size
        return cls(
            size=int(size),
            mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),  # type: ignore[arg-type]
            std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),  # type: ignore[arg-type]
            resize_mode=str(cfg.get("resize_mode", "shortest")),
        )


@dataclass(frozen=True, slots=True)
class Parts:
    """What every runner needs besides the model: its preprocessing and tokenizer, and where
    derived files (int8 graphs) are kept."""

    preprocess: Preprocess | None  # None: a model loaded for texts only
    tokenizer: Any
    cache: Path
    name: str  # a file-name stem for this model and checkpoint


def normalised(pixels: Pixels, pre: Preprocess | None, device: str) -> torch.Tensor:
    """(n, S, S, 3) uint8 pictures as the model's normalised float32 NCHW (channels_last)."""
    import torch

    if pre is None:
        raise RuntimeError("this model was loaded for texts only")

    # (n, S, S, 3) viewed as NCHW is already channels_last; one fused multiply-add
    # normalises it: (x / 255 - mean) / std == x * scale + shift.
    batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(0, 3, 1, 2)
    scale = torch.tensor([1.0 / (255.0 * s) for s in pre.std], device=device)
    shift = torch.tensor([-m / s for m, s in zip(pre.mean, pre.std, strict=True)], device=device)
    return torch.addcmul(shift.view(1, 3, 1, 1), batch.float(), scale.view(1, 3, 1, 1))


def unit_rows(out: Any) -> Embeddings:
    """Rows scaled to unit length, as float32 numpy (from a tensor or an array)."""
    vecs = np.asarray(out.float().cpu().numpy() if hasattr(out, "cpu") else out, np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return (vecs / np.maximum(norms, 1e-12)).astype(np.float32)


class TorchRunner:
    """The open_clip model in a torch dtype on a device (linears packed on the CPU)."""

    def __init__(
        self, model: Any, parts: Parts, device: str, dtype: torch.dtype, pack: bool = True
    ) -> None:
        from indexer.packed import pack_for_cpu

        model.to(device=device, dtype=dtype)
        self.packed = pack_for_cpu(model) if device == "cpu" and pack else 0
        self.model, self.parts, self.device, self.dtype = model, parts, device, dtype

    def embed_pixels(self, pixels: Pixels) -> Embeddings:
        """Prepared pictures into unit rows."""
        import torch

        x = normalised(pixels, self.parts.preprocess, self.device)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return unit_rows(self.model.encode_image(x))

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """Texts into unit rows."""
        import torch

        from indexer.encoder import encode_text

        tokens = self.parts.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            return unit_rows(encode_text(self.model, tokens, self.parts.tokenizer))


class Int8Runner:
    """Both towers in int8 through ONNX Runtime (`indexer/int8.py`), on the CPU."""

    def __init__(self, model: Any, parts: Parts) -> None:
        from indexer import int8
        from indexer.encoder import text_cuts

        missing = int8.available()
        if missing:
            raise ModelUnavailable(f"int8: {missing}")
        towers = ("text",) if parts.preprocess is None else ("image", "text")
        self.towers = int8.Int8Towers(model, parts.cache, parts.name, towers=towers)
        self.parts = parts
        self._cut = text_cuts(model, parts.tokenizer)

    def embed_pixels(self, pixels: Pixels) -> Embeddings:
        """Prepared pictures into unit rows."""
        x = normalised(pixels, self.parts.preprocess, "cpu")
        return unit_rows(self.towers.encode_image(x.contiguous().numpy()))

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """Texts into unit rows (tokens cut after the longest text's end, as in torch)."""
        tokens = self.parts.tokenizer(list(texts))
        if self._cut:
            tokens = tokens[:, : int((tokens != 0).sum(dim=1).max())]
        return unit_rows(self.towers.encode_text(tokens.numpy()))


def _torch(dtype_name: str) -> Callable[[Any, Parts, str], Any]:
    def build(model: Any, parts: Parts, device: str) -> TorchRunner:
        import torch

        return TorchRunner(model, parts, device, getattr(torch, dtype_name))

    return build


def _int8(model: Any, parts: Parts, device: str) -> Int8Runner:
    return Int8Runner(model, parts)


#: Precision name -> runner builder (model, parts, device). The model may be converted in place.
RUNNERS: dict[str, Callable[[Any, Parts, str], Any]] = {
    "fp32": _torch("float32"),
    "bf16": _torch("bfloat16"),
    "fp16": _torch("float16"),
    "int8": _int8,
}
