"""Building an open_clip model: both towers, or the text tower alone for text queries.

A text query needs none of the image tower: building it (random initialisation) and
reading its weights is half or more of a cold `pixsearch search` (benchmarks/bench_cli.py).
`build_clip(..., text_only=True)` builds the model with a stand-in for the image tower
and reads only the other weights from the checkpoint (memory-mapped or safetensors, so
the image tower's bytes are never read). Models that this cannot handle (another class,
a checkpoint in another layout) are built whole.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.model_errors import load_error
from indexer.named_models import NamedModel

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: The prefix of the image tower's weights in every open_clip CLIP checkpoint.
VISUAL_PREFIX = "visual."
_patch_lock = threading.Lock()


def is_text_key(key: str) -> bool:
    """Whether a state dict entry is needed to embed texts."""
    return not key.startswith(VISUAL_PREFIX)


def build_clip(
    name: str, pretrained: str, named: NamedModel | None = None, text_only: bool = False
) -> Any:
    """The open_clip model `name` with weights `pretrained` (a tag or a file path) or those
    of a named model, on the CPU in float32; with `text_only`, without the image tower
    (see `has_image_tower`). Raises `ModelUnavailable` with the reason."""
    import open_clip

    if named is not None:
        model = _blank(name, text_only)
        keep = is_text_key if not has_image_tower(model) else None
        model.load_state_dict(named.state_dict(keep or (lambda _: True)), strict=True)
        return model
    if text_only:
        path = _checkpoint_path(name, pretrained)
        if path is not None:
            model = _text_only(name, path)
            if model is not None:
                return model
    try:
        return open_clip.create_model(name, pretrained=pretrained or None, device="cpu")
    except Exception as exc:  # open_clip raises many kinds; tell the user which case it is
        raise load_error(name, pretrained, pretrained, exc) from None


def _checkpoint_path(name: str, pretrained: str) -> str | None:
    """The local file holding the weights (downloaded to the hub cache for a tag)."""
    if not pretrained:
        return None
    if os.path.isfile(pretrained):
        return pretrained
    import open_clip
    from open_clip.pretrained import download_pretrained

    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        return None
    try:
        return str(download_pretrained(cfg))
    except Exception as exc:
        raise load_error(name, pretrained, pretrained, exc) from None


def _text_only(name: str, path: str) -> Any | None:
    """The text-only model with the checkpoint's text weights, or None to build it whole."""
    model = _blank(name, text_only=True)
    if has_image_tower(model):
        return None  # a class that builds its image tower elsewhere (CoCa)
    try:
        state = _read_state(path, is_text_key)
    except Exception:
        log.debug("reading %s for the text tower failed; loading it whole", path, exc_info=True)
        return None
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        from open_clip.model import convert_to_custom_text_state_dict

        state = convert_to_custom_text_state_dict(state)
    if "logit_scale" in state and model.logit_scale.ndim != state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        log.debug(
            "text tower of %s does not match %s (missing %s, unexpected %s); loading it whole",
            name,
            path,
            result.missing_keys[:3],
            result.unexpected_keys[:3],
        )
        return None
    return model


def _blank(name: str, text_only: bool) -> Any:
    """The architecture with random weights; `text_only`: image tower stood in for."""
    import open_clip

    if not text_only:
        return open_clip.create_model(name, pretrained=None, device="cpu")
    with _without_image_tower():
        return open_clip.create_model(name, pretrained=None, device="cpu")


@cache
def _no_image_tower_class() -> type:
    import torch

    class NoImageTower(torch.nn.Module):
        """Stands in for the image tower of a model loaded for texts only: no weights."""

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("this model was loaded for texts only")

    return NoImageTower


def has_image_tower(model: Any) -> bool:
    """Whether `model` can embed images (it was not loaded for texts only)."""
    return not isinstance(getattr(model, "visual", None), _no_image_tower_class())


@contextmanager
def _without_image_tower() -> Iterator[None]:
    """open_clip's CLIP classes build a stand-in instead of their image tower."""
    import open_clip.model as oc_model

    with _patch_lock:
        original: Callable[..., Any] = oc_model._build_vision_tower
        stand_in = _no_image_tower_class()
        oc_model._build_vision_tower = lambda *a, **k: stand_in()
        try:
            yield
        finally:
            oc_model._build_vision_tower = original


def _read_state(path: str, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The entries of a checkpoint that `keep` accepts, reading little else."""
    import torch

    if Path(path).suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(_strip(k))}  # noqa: SIM118
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds no state dict")
    return {_strip(k): v for k, v in checkpoint.items() if keep(_strip(k))}


def _strip(key: str) -> str:
    return key[7:] if key.startswith("module.") else key
