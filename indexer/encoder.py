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

from indexer.autoprecision import calibrated_choice, int8_cache, int8_graph_name, remembered
from indexer.errors import ModelUnavailable
from indexer.model_errors import check_tag
from indexer.named_models import named_model
from indexer.packed import return_freed_memory
from indexer.precision import (
    Choice,
    available_devices,
    choose_device,
    fixed_precision,
)
from indexer.runners import Parts, Preprocess
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


#: oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below native bfloat16: set to emulate an
#: older CPU, they make bf16 slow, so `auto` must not consider it.
_CAPS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                      "AVX512_CORE_VNNI"}  # fmt: skip


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix work natively (AVX-512 BF16 or AMX)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _CAPS_WITHOUT_BF16:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
        home: Path | None = None,
        text_only: bool = False,
    ) -> None:
        self.model_name = model
        self.pretrained = pretrained
        self.requested_device = device
        self.requested_precision = precision
        self.home = home
        #: Loaded without its image tower: embeds texts only (a text query needs no more).
        self.text_only = text_only
        self.key = model_key(model, pretrained)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, text_only: bool = False) -> ClipEncoder:
        """The encoder the settings name (not loaded yet)."""
        return cls(
            settings.model,
            settings.pretrained,
            settings.device,
            settings.precision,
            settings.home,
            text_only,
        )

    @cached_property
    def device(self) -> str:
        """The torch device the model runs on."""
        return choose_device(self.requested_device, *available_devices())

    @property
    def precision(self) -> str:
        """The precision the model runs in (fp32, bf16, fp16, int8); loads the model."""
        return self._loaded.choice.precision

    @property
    def choice(self) -> Choice:
        """Which precision runs, and why (with the calibration's figures); loads the model."""
        return self._loaded.choice

    @cached_property
    def _loaded(self) -> _Loaded:
        from indexer.runners import RUNNERS

        model = self._create()
        tokenizer = self._create_tokenizer()
        name = int8_graph_name(self.key, self.pretrained)
        preprocess = None if self.text_only else Preprocess.of(model)
        parts = Parts(preprocess, tokenizer, int8_cache(), name)
        choice = self._choose(model, parts)
        runner = RUNNERS[choice.precision](model, parts, self.device)
        del model
        return_freed_memory()
        log.info(
            "loaded %s%s on %s: %s (%s)",
            self.key,
            " (text tower)" if self.text_only else "",
            self.device,
            choice.precision,
            choice.reason,
        )
        return _Loaded(runner, preprocess, choice)

    @property
    def torch_model(self) -> Any | None:
        """The open_clip model when torch runs it (None when ONNX Runtime runs int8); loads."""
        return getattr(self.load()._loaded.runner, "model", None)

    def _choose(self, model: Any, parts: Parts) -> Choice:
        fixed = fixed_precision(self.requested_precision, self.device)
        if fixed is not None:
            why = (
                "auto: float16 on " + self.device
                if self.requested_precision == "auto"
                else ("forced by PIXSEARCH_PRECISION")
            )
            return Choice(fixed, why)
        if self.text_only:
            # Calibrating needs the image tower: use what a full load chose on this CPU (so
            # that queries are embedded as the index was), else float32.
            known = remembered(self.home, self.key)
            if known is not None:
                return known
            return Choice("fp32", "auto: texts only, not calibrated on this CPU yet")
        return calibrated_choice(model, parts, self.key, self.home)

    def _create(self) -> Any:
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
        torch.set_grad_enabled(False)
        return model

    def _create_tokenizer(self) -> Any:
        import open_clip

        return open_clip.get_tokenizer(resolve_model_name(self.model_name))

    def load(self) -> ClipEncoder:
        """Load the model now (it is otherwise loaded on first use)."""
        with self._lock:
            _ = self._loaded
        return self

    @property
    def preprocess(self) -> Preprocess:
        """The model's input size, normalisation and resize mode."""
        preprocess = self.load()._loaded.preprocess
        if preprocess is None:
            raise RuntimeError(f"encoder {self.key} was loaded for texts only")
        return preprocess

    @cached_property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.embed_texts(["a photo"]).shape[1])

    def prepare(self, img: PILImage.Image) -> Pixels:
        """Resize and crop an RGB image exactly as open_clip's transforms do, as uint8."""
        return prepare_pixels(img, self.preprocess)

    def embed_pixels(self, pixels: Pixels) -> Embeddings:
        """Embed prepared pictures (n, S, S, 3) uint8 into unit-norm float32 rows."""
        return self.load()._loaded.runner.embed_pixels(pixels)

    def embed_images(self, images: Sequence[PILImage.Image]) -> Embeddings:
        """Embed RGB images (any size) into unit-norm float32 rows."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_pixels(np.stack([self.prepare(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """Embed texts into unit-norm float32 rows, in the images' space."""
        return self.load()._loaded.runner.embed_texts(texts)


@dataclass(frozen=True, slots=True)
class _Loaded:
    runner: Any  # a runner of indexer/runners.py
    preprocess: Preprocess | None  # None: loaded for texts only
    choice: Choice


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


def text_prefix_supported(model: Any) -> bool:
    """Whether `encode_text_prefix` gives this model's `encode_text` (CLIP text towers with a
    causal mask, pooled at the end token)."""
    import open_clip

    return bool(
        isinstance(model, open_clip.model.CLIP)
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
    )


def encode_text(model: Any, tokens: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """`model.encode_text(tokens)`, run only up to the longest text's end token.

    Under CLIP's causal mask, the (padding) positions after a text's end token cannot change
    its pooled output, so a query of ~10 tokens need not pay for all 77 positions: 2-4x
    faster on CPU, same result (exact in float32, within bf16 rounding otherwise).
    Other text towers run whole.
    """
    if not text_cuts(model, tokenizer):
        return model.encode_text(tokens)
    length = int((tokens != 0).sum(dim=1).max())  # SimpleTokenizer pads with 0
    if length >= tokens.shape[1]:
        return model.encode_text(tokens)
    return encode_text_prefix(model, tokens[:, :length])


def text_cuts(model: Any, tokenizer: Any) -> bool:
    """Whether this model's texts may be cut after their end token (`encode_text`)."""
    import open_clip

    return text_prefix_supported(model) and isinstance(
        tokenizer, open_clip.tokenizer.SimpleTokenizer
    )


def encode_text_prefix(model: Any, text: torch.Tensor) -> torch.Tensor:
    """A CLIP text tower on tokens cut after the longest text's end token (any length)."""
    import torch
    from open_clip.transformer import text_global_pool

    length = text.shape[1]
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


_encoders: dict[tuple[str, str, str, str, bool], ClipEncoder] = {}
_encoders_lock = threading.Lock()


def get_encoder(settings: Settings, text_only: bool = False) -> ClipEncoder:
    """The process-wide encoder for these settings: models are loaded once per process.

    `text_only`: one without its image tower, for a process that only embeds texts.
    """
    key = (settings.model, settings.pretrained, settings.device, settings.precision)
    with _encoders_lock:
        if (*key, text_only) not in _encoders:
            # The first home seen keeps the precision choice; the model is the same for all.
            _encoders[(*key, text_only)] = ClipEncoder(
                *key, home=settings.home, text_only=text_only
            )
        return _encoders[(*key, text_only)]
