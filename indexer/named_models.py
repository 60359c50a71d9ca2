"""Models that ship inside pixsearch, by name: `PIXSEARCH_MODEL=demo` needs no network.

A named model is an open_clip config and packed weights in the package (see
``indexer/demo_model``), with the ClipCap captioner trained for it. Its name stands for the
architecture and the weights at once: `PIXSEARCH_PRETRAINED` does not apply to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class NamedModel:
    """A CLIP (and its captioner) shipped in the package."""

    name: str
    #: The open_clip architecture name: the stem of the config JSON in `folder`.
    architecture: str
    folder: Path
    weights: str  # packed .npz in `folder` (indexer/captioners/clipcap.py:pack_state_dict)
    #: A ClipCap captioner folder trained on this CLIP's embeddings, if any.
    captioner: Path | None = None
    description: str = ""

    @property
    def config(self) -> Path:
        """The open_clip model config JSON."""
        return self.folder / f"{self.architecture}.json"

    @property
    def key(self) -> str:
        """The name its embeddings are stored under (`ARCH/WEIGHTS`, as for other models)."""
        return f"{self.architecture}/{self.name}"

    def state_dict(self, keep: Callable[[str], bool] = lambda key: True) -> dict[str, torch.Tensor]:
        """The weights as float32 tensors (those whose names `keep` accepts)."""
        import torch

        from indexer.captioners.clipcap import load_packed

        arrays = load_packed(self.folder / self.weights)
        return {k: torch.from_numpy(v) for k, v in arrays.items() if keep(k)}


NAMED_MODELS: dict[str, NamedModel] = {
    "demo": NamedModel(
        name="demo",
        architecture="pixsearch-tiny-clip",
        folder=_PACKAGE / "demo_model" / "clip",
        weights="tiny_clip_weights.npz",
        captioner=_PACKAGE / "demo_model" / "captioner",
        description="tiny CLIP and captioner trained on synthetic shapes (`pixsearch demo`)",
    ),
}


def named_model(name: str) -> NamedModel | None:
    """The shipped model called `name` (case-insensitive), or None."""
    return NAMED_MODELS.get(name.strip().lower())
