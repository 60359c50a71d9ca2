"""Captions from pixels with a transformers VisionEncoderDecoder (ViT encoder, GPT-2 decoder)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.captioners.base import register, unavailable
from indexer.errors import UnreadableImage
from indexer.imageio import decode, max_file_bytes, read_file
from indexer.types import Embeddings

log = logging.getLogger(__name__)

#: Images larger than this are refused by the captioner too (it decodes them itself).
MAX_PIXELS = 250_000_000


@register("vision-encoder-decoder")
class VisionEncoderDecoderKind:
    """Any hub id or save_pretrained folder of a VisionEncoderDecoderModel (the default)."""

    def accepts(self, spec: str) -> bool:
        return True

    def build(self, spec: str, device: str) -> VitGpt2Captioner:
        return VitGpt2Captioner(spec, device)


class VitGpt2Captioner:
    """nlpconnect/vit-gpt2-image-captioning and models like it, with beam search."""

    #: It reads the image files, so any CLIP model may index them.
    clip_model: str | None = None
    clip_dim: int | None = None

    def __init__(
        self, source: str, device: str = "cpu", num_beams: int = 4, max_new_tokens: int = 20
    ) -> None:
        local = Path(source).expanduser()
        self.source = str(local) if local.exists() else source
        self.name = f"vision-encoder-decoder:{local.name if local.exists() else source}"
        self.device = device
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()
        self._model, self._processor, self._tokenizer = self._load()

    def _load(self) -> tuple[Any, Any, Any]:
        if not Path(self.source).exists():
            from indexer.hub import unreachable_reason

            # At once, rather than after the hub client's retries (~35 s here).
            reason = unreachable_reason(self.source, ["config.json"])
            if reason is not None:
                raise unavailable(self.source, ConnectionError(reason))
        try:
            import transformers
            from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

            transformers.logging.set_verbosity_error()
            model = VisionEncoderDecoderModel.from_pretrained(self.source)
            processor = AutoImageProcessor.from_pretrained(self.source)
            tokenizer = AutoTokenizer.from_pretrained(self.source)
        except Exception as exc:  # hub, file and format errors all mean "not available"
            raise unavailable(self.source, exc) from None
        model.eval().to(self.device)
        return model, processor, tokenizer

    @property
    def max_positions(self) -> int | None:
        """How many tokens the decoder can read (GPT-2's `n_positions`); None if unbounded."""
        cfg = self._model.config.decoder
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return int(limit) if limit else None

    def _pixels(self, paths: Sequence[str]) -> tuple[Any, list[bool]]:
        from PIL import Image

        images, ok = [], []
        for p in paths:
            try:
                data = read_file(p, max_file_bytes(MAX_PIXELS))
                img, _ = decode(data, max_pixels=MAX_PIXELS, min_side=512)
                images.append(img)
                ok.append(True)
            except UnreadableImage:
                images.append(Image.new("RGB", (32, 32)))
                ok.append(False)
        pv = self._processor(images=images, return_tensors="pt").pixel_values.to(self.device)
        return pv, ok

    def caption(self, paths: Sequence[str], embeddings: Embeddings) -> list[str]:
        """Beam-search captions from the image files."""
        import torch

        if not paths:
            return []
        pv, ok = self._pixels(paths)
        with self._lock, torch.inference_mode():
            out = self._model.generate(
                pixel_values=pv,
                num_beams=self.num_beams,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
            )
        texts = self._tokenizer.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) if good else "" for t, good in zip(texts, ok, strict=True)]

    def score(
        self, paths: Sequence[str], embeddings: Embeddings, text: str
    ) -> npt.NDArray[np.float32]:
        """Mean log-probability per token of `text` given each image."""
        import torch

        if not paths:
            return np.zeros(0, np.float32)
        pv, _ = self._pixels(paths)
        ids = self._tokenizer(text, return_tensors="pt").input_ids.to(self.device)
        eos = self._tokenizer.eos_token_id
        # The decoder has a fixed number of positions: a longer text would index past its
        # position table, so it is cut to fit, keeping room for the end-of-text token.
        if self.max_positions is not None:
            ids = ids[:, : self.max_positions - (eos is not None)]
        if eos is not None:
            ids = torch.cat([ids, torch.tensor([[eos]], device=self.device)], dim=1)
        labels = ids.repeat(len(paths), 1)
        with self._lock, torch.inference_mode():
            logits = self._model(pixel_values=pv, labels=labels).logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1))
        return logp.squeeze(-1).mean(dim=1).cpu().numpy().astype(np.float32)
