"""ClipCap captioners in the registry: captions straight from stored CLIP embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.captioners.base import register
from indexer.captioners.clipcap import CONFIG_NAME, ClipCapCaptioner
from indexer.errors import ModelUnavailable
from indexer.named_models import named_model
from indexer.types import Embeddings


@register("clipcap")
class ClipCapKind:
    """A folder holding a pixsearch ClipCap config (`clipcap_config.json`) and weights."""

    def accepts(self, spec: str) -> bool:
        return (Path(spec).expanduser() / CONFIG_NAME).is_file()

    def build(self, spec: str, device: str) -> ClipCapAdapter:
        return ClipCapAdapter(spec, device)


@register("named")
class NamedCaptionerKind:
    """The captioner of a model shipped with pixsearch, by the model's name (`demo`)."""

    def accepts(self, spec: str) -> bool:
        named = named_model(spec)
        return named is not None and named.captioner is not None

    def build(self, spec: str, device: str) -> ClipCapAdapter:
        named = named_model(spec)
        if named is None or named.captioner is None:
            raise ModelUnavailable(f"no captioner ships with model '{spec}'")
        return ClipCapAdapter(str(named.captioner), device, name=f"clipcap:{named.name}")


class ClipCapAdapter:
    """The Captioner interface over `ClipCapCaptioner`; image files are never opened."""

    def __init__(self, folder: str, device: str = "cpu", name: str | None = None) -> None:
        path = Path(folder).expanduser()
        if not (path / CONFIG_NAME).is_file():
            raise ModelUnavailable(f"{folder} is not a ClipCap captioner folder")
        self.impl = ClipCapCaptioner(path, device)
        self.name = name or f"clipcap:{path.name}"

    @property
    def clip_model(self) -> str:
        """The CLIP model whose embeddings the captioner reads (checked by `load_captioner`)."""
        return self.impl.clip_model

    @property
    def clip_dim(self) -> int:
        """The dimension of those embeddings."""
        return self.impl.dim

    def caption(self, paths: Sequence[str], embeddings: Embeddings) -> list[str]:
        """Captions decoded from the embeddings."""
        return self.impl.caption_embeddings(embeddings)

    def score(
        self, paths: Sequence[str], embeddings: Embeddings, text: str
    ) -> npt.NDArray[np.float32]:
        """Length-normalised log-likelihood of the text per embedding."""
        return np.asarray(self.impl.score_texts(embeddings, text), np.float32)
