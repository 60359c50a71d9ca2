"""Tiny trained models for tests: a CLIP and a ClipCap captioner over synthetic shapes.

The committed assets are small (float16, row-sparse ``.npz``); these helpers turn them
into what pixsearch loads like any real model::

    json_path, ckpt = materialize_tiny_clip(tmp_path)
    open_clip.add_model_config(json_path)
    model, _, preprocess = open_clip.create_model_and_transforms(
        json_path.stem, pretrained=str(ckpt))

    captioner = ClipCapCaptioner(materialize_tiny_captioner(tmp_path / "cap"))

See ``tests/assets/README.md`` for how the assets were built.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

ASSETS_DIR = Path(__file__).resolve().parent
REPO_ROOT = ASSETS_DIR.parents[1]
TINY_CLIP_DIR = ASSETS_DIR / "tiny_clip"
TINY_CAPTIONER_DIR = ASSETS_DIR / "tiny_captioner"
#: open_clip model name (the stem of the config JSON).
TINY_CLIP_MODEL_NAME = "pixsearch-tiny-clip"
#: File name of the materialised checkpoint.
TINY_CLIP_CHECKPOINT_NAME = "pixsearch-tiny-clip.pt"
_TINY_CLIP_WEIGHTS = "tiny_clip_weights.npz"


def materialize_tiny_clip(
    dest_dir: str | Path, source_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """Write ``pixsearch-tiny-clip.json`` and ``pixsearch-tiny-clip.pt`` into ``dest_dir``.

    Returns ``(json_path, checkpoint_path)``. The checkpoint is a plain float32 state dict
    that ``open_clip.create_model_and_transforms(json_path.stem, pretrained=...)`` loads
    strictly. Takes a fraction of a second.
    """
    import torch

    from indexer.captioners.clipcap import load_packed

    src = Path(source_dir) if source_dir is not None else TINY_CLIP_DIR
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    json_path = dest / f"{TINY_CLIP_MODEL_NAME}.json"
    if json_path.resolve() != (src / json_path.name).resolve():
        shutil.copyfile(src / json_path.name, json_path)
    state = {k: torch.from_numpy(v) for k, v in load_packed(src / _TINY_CLIP_WEIGHTS).items()}
    ckpt = dest / TINY_CLIP_CHECKPOINT_NAME
    torch.save(state, ckpt)
    return json_path, ckpt


def materialize_tiny_captioner(dest_dir: str | Path) -> Path:
    """Copy the tiny captioner folder to ``dest_dir``; returns it (for ``ClipCapCaptioner``).

    The committed folder is directly loadable too (``TINY_CAPTIONER_DIR``); copying keeps
    tests from depending on the source tree.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for f in TINY_CAPTIONER_DIR.iterdir():
        if f.is_file() and f.suffix in (".json", ".npz"):
            shutil.copyfile(f, dest / f.name)
    return dest


def shapes_module() -> ModuleType:
    """The synthetic shapes generator, ``indexer.shapes`` (``make_dataset``, ``COLOURS``, ...)."""
    from indexer import shapes

    return shapes


def make_synthetic_dataset(out_dir: str | Path, seed: int, count: int) -> Path:
    """Shortcut for ``indexer.shapes.make_dataset``; returns ``out_dir``."""
    return shapes_module().make_dataset(out_dir, seed, count)
