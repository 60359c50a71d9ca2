"""CLIP encoders: images and texts into one L2-normalised space (open_clip)."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import ModelUnavailable
from indexer.model_errors import check_tag
from indexer.named_models import named_model
from indexer.packed import pack_for_cpu
from indexer.types import Embeddings, Pixels

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

    from indexer.settings import Settings

log = logging.getLogger(__name__)

# OpenMP threads that spin while they wait (libgomp's default) take the cores that the
# decoding threads, the model's other thread and other processes need. On 2 busy cores this
# made indexing ~1.5x slower in wall time and CPU time, and a text query up to 20x slower
# (benchmarks/: bench_index.py, bench_query.py). It must be set before torch (or faiss)
# loads its OpenMP runtime, which happens lazily after this module is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `prepare` hands torch a read-only view of Pillow's pixels (only read; a copy costs more
# than the resize), about which torch warns once per process. (catch_warnings around the
# call would not be thread-safe, and the readers are threads.)
warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix work natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True, slots=True)
class Preprocess:
    """The model's own preprocessing, as open_clip configures it."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str


def resolve_model_name(model: str) -> str:
    """An open_clip architecture name; a path to a config JSON, or the name of a model
    shipped with pixsearch (`demo`), is registered under the config's stem."""
    named = named_model(model)
    if named is not None:
        import open_clip

        open_clip.add_model_config(named.config)
        return named.architecture
    path = Path(model).expanduser()
    if model.endswith(".json"):
        if not path.is_file():
            raise ModelUnavailable(f"model config file {model} does not exist")
        import open_clip

        open_clip.add_model_config(path)
        return path.stem
    return model


def model_key(model: str, pretrained: str) -> str:
    """The name under which a model's embeddings are stored."""
    named = named_model(model)
    if named is not None:
        return named.key
    name = Path(model).stem if model.endswith(".json") else model
    weights = Path(pretrained).name if _is_path(pretrained) else pretrained
    return f"{name}/{weights}"


def _is_path(pretrained: str) -> bool:
    return (
        "/" in pretrained
        or "\\" in pretrained
        or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    )


class ClipEncoder:
    """An open_clip model loaded lazily, once, embedding batches of images and texts."""

    def __init__(
        self,
        model: str,
        pretrained: str,
        device: str = "auto",
        precision: str = "auto",
        text_only: bool = False,
    ) -> None:
        self.model_name = model
        self.pretrained = pretrained
        self.requested_device = device
        self.requested_precision = precision
        #: Loaded without its image tower: embeds texts only (a text query needs no more).
        self.text_only = text_only
        self.key = model_key(model, pretrained)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, text_only: bool = False) -> ClipEncoder:
        """The encoder the settings name (not loaded yet)."""
        return cls(
            settings.model, settings.pretrained, settings.device, settings.precision, text_only
        )

    @cached_property
    def device(self) -> str:
        """The torch device the model runs on."""
        import torch

        if self.requested_device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.requested_device == "cuda" and not torch.cuda.is_available():
            raise ModelUnavailable("PIXSEARCH_DEVICE=cuda, but no CUDA device is available")
        return self.requested_device

    @cached_property
    def dtype(self) -> torch.dtype:
        """Compute precision: bf16 on capable CPUs, fp16 on CUDA, else fp32."""
        import torch

        choice = self.requested_precision
        if choice == "auto":
            choice = "fp16" if self.device == "cuda" else "bf16" if cpu_has_bf16() else "fp32"
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]

    @cached_property
    def _model(self) -> Any:
        import open_clip
        import torch

        from indexer.clip_loading import build_clip

        name = resolve_model_name(self.model_name)
        if name not in open_clip.list_models():
            raise ModelUnavailable(
                f"unknown model '{self.model_name}': use an open_clip architecture name "
                "(`pixsearch models` lists them), the path of a model config JSON, or demo"
            )
        named = named_model(self.model_name)
        pretrained = self.pretrained
        if named is not None:
            pretrained = ""
        elif _is_path(pretrained):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise ModelUnavailable(f"checkpoint file {pretrained} does not exist")
            pretrained = str(path)
        elif pretrained:
            check_tag(name, pretrained)
        model = build_clip(name, pretrained, named, text_only=self.text_only)
        model.eval()
        model.to(device=self.device, dtype=self.dtype)
        torch.set_grad_enabled(False)
        packed = pack_for_cpu(model) if self.device == "cpu" else 0
        log.info(
            "loaded %s%s on %s in %s%s",
            self.key,
            " (text tower)" if self.text_only else "",
            self.device,
            self.dtype,
            f" ({packed} layers packed for the CPU)" if packed else "",
        )
        return model

    def load(self) -> ClipEncoder:
        """Load the model now (it is otherwise loaded on first use)."""
        with self._lock:
            _ = self._model
        return self

    @cached_property
    def _tokenizer(self) -> Any:
        import open_clip

        return open_clip.get_tokenizer(resolve_model_name(self.model_name))

    @cached_property
    def preprocess(self) -> Preprocess:
        """The model's input size, normalisation and resize mode."""
        if self.text_only:
            raise RuntimeError(f"encoder {self.key} was loaded for texts only")
        cfg = getattr(self._model.visual, "preprocess_cfg", {})
        size = cfg.get("size", self._model.visual.image_size)
        size = size[0] if isinstance(size, tuple | list) else size
        return Preprocess(
            size=int(size),
            mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),  # type: ignore[arg-type]
            std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),  # type: ignore[arg-type]
            resize_mode=str(cfg.get("resize_mode", "shortest")),
        )

    @cached_property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.embed_texts(["a photo"]).shape[1])

    def prepare(self, img: PILImage.Image) -> Pixels:
        """Resize and crop an RGB image exactly as open_clip's transforms do, as uint8."""
        return prepare_pixels(img, self.preprocess)

    def embed_pixels(self, pixels: Pixels) -> Embeddings:
        """Embed prepared pictures (n, S, S, 3) uint8 into unit-norm float32 rows."""
        import torch

        model = self._model
        # (n, S, S, 3) viewed as NCHW is already channels_last; one fused multiply-add
        # normalises it: (x / 255 - mean) / std == x * scale + shift.
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(0, 3, 1, 2)
        mean, std = self.preprocess.mean, self.preprocess.std
        scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=self.device)
        shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=self.device)
        x = torch.addcmul(shift.view(1, 3, 1, 1), batch.float(), scale.view(1, 3, 1, 1))
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = model.encode_image(x)
        return _normalise(out)

    def embed_images(self, images: Sequence[PILImage.Image]) -> Embeddings:
        """Embed RGB images (any size) into unit-norm float32 rows."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_pixels(np.stack([self.prepare(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """Embed texts into unit-norm float32 rows, in the images' space."""
        import torch

        model = self._model
        tokens = self._tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            out = _encode_text(model, tokens, self._tokenizer)
        return _normalise(out)


def prepare_pixels(img: PILImage.Image, preprocess: Preprocess) -> Pixels:
    """Resize and crop an RGB image as open_clip's transforms do, as uint8: needs only the
    model's `Preprocess`, not the model (Ray workers prepare pixels without loading it)."""
    size = preprocess.size
    w, h = img.size
    # A read-only view of Pillow's pixels: copying 1000x750 costs ~2.5 ms here.
    pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    if preprocess.resize_mode == "squash":
        return _resize_bicubic(pixels, size, size)
    # torchvision's Resize(size) then CenterCrop(size), with the same rounding.
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        pixels = _resize_bicubic(pixels, new_w, new_h)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return np.ascontiguousarray(pixels[top : top + size, left : left + size])


def _encode_text(model: Any, tokens: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """`model.encode_text(tokens)`, run only up to the longest text's end token.

    Under CLIP's causal mask, the (padding) positions after a text's end token cannot change
    its pooled output, so a query of ~10 tokens need not pay for all 77 positions: 2-4x
    faster on CPU, same result (exact in float32, within bf16 rounding otherwise).
    Other text towers run whole.
    """
    import open_clip
    import torch
    from open_clip.transformer import text_global_pool

    if not (
        isinstance(model, open_clip.model.CLIP)
        and isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer)
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
    ):
        return model.encode_text(tokens)
    length = int((tokens != 0).sum(dim=1).max())  # SimpleTokenizer pads with 0
    if length >= tokens.shape[1]:
        return model.encode_text(tokens)
    text = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, text, "argmax")
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return x


def _resize_bicubic(pixels: Pixels, width: int, height: int) -> Pixels:
    """Pillow's antialiased bicubic resize (what torchvision applies to PIL images), on uint8.

    torch's uint8 antialiased kernel implements Pillow's filter (results within 1 level) and
    runs ~8x faster: 0.7 ms instead of 5.6 ms for 1000x750 -> 298x224, a fifth of the CPU
    time of reading a 12-megapixel photo (benchmarks/ceiling.py).
    """
    import torch

    chw = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    out = torch.nn.functional.interpolate(chw, size=(height, width), mode="bicubic", antialias=True)
    return out[0].permute(1, 2, 0).contiguous().numpy()


def _normalise(out: torch.Tensor) -> Embeddings:
    vecs = out.float().cpu().numpy()
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return (vecs / np.maximum(norms, 1e-12)).astype(np.float32)


_encoders: dict[tuple[str, str, str, str, bool], ClipEncoder] = {}
_encoders_lock = threading.Lock()


def get_encoder(settings: Settings, text_only: bool = False) -> ClipEncoder:
    """The process-wide encoder for these settings: models are loaded once per process.

    `text_only`: one without its image tower, for a process that only embeds texts.
    """
    key = (settings.model, settings.pretrained, settings.device, settings.precision, text_only)
    with _encoders_lock:
        if key not in _encoders:
            _encoders[key] = ClipEncoder(*key)
        return _encoders[key]
