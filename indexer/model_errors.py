"""Why a CLIP model would not load, in one line: unknown tag, no network, bad or wrong file."""

from __future__ import annotations

import logging
import os
import textwrap

from indexer.errors import ModelUnavailable

log = logging.getLogger(__name__)


def check_tag(name: str, tag: str) -> None:
    """Fail at once on an unknown tag, or when its weights must be downloaded and the hub
    cannot be reached (rather than after the hub client's retries)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg and os.path.isfile(tag):
        return  # open_clip takes an existing file for a checkpoint too
    if not cfg:
        tags = ", ".join(t for m, t in open_clip.list_pretrained() if m == name) or "none"
        raise ModelUnavailable(
            f"unknown pretrained tag '{tag}' for model '{name}' (known: {tags}); "
            "or set PIXSEARCH_PRETRAINED to the path of a checkpoint file"
        )
    hub = cfg.get("hf_hub", "")
    if not hub or cfg.get("file"):
        return
    # The same repository and file names as open_clip's download_pretrained_from_hf.
    repo_id, filename = os.path.split(hub)
    filename = filename or open_clip.constants.HF_WEIGHTS_NAME
    candidates = [filename]
    if filename == open_clip.constants.HF_WEIGHTS_NAME:
        candidates.insert(0, open_clip.constants.HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    from indexer.hub import unreachable_reason

    reason = unreachable_reason(repo_id, candidates)
    if reason is not None:
        raise ModelUnavailable(
            f"cannot download weights '{tag}' for model '{name}' from the Hugging Face hub "
            f"({reason}); download the checkpoint once elsewhere and set "
            "PIXSEARCH_PRETRAINED=/path/to/checkpoint (.bin, .pt or .safetensors)"
        )


def load_error(name: str, given: str, pretrained: str, exc: Exception) -> ModelUnavailable:
    """The one-line error for a failed load of `given` (resolved to `pretrained`): no
    download, not a checkpoint, or a checkpoint of another architecture."""
    reason = textwrap.shorten(str(exc), 110, placeholder="...")
    if not os.path.isfile(pretrained):
        return ModelUnavailable(
            f"cannot load weights '{given}' for model '{name}' ({reason}); "
            "without network, download the checkpoint once elsewhere and set "
            "PIXSEARCH_PRETRAINED=/path/to/checkpoint (.bin, .pt or .safetensors)"
        )
    import open_clip
    from open_clip.factory import load_state_dict

    try:  # read the file as open_clip does, to tell a bad file from a wrong one
        state = load_state_dict(pretrained)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    except Exception as read_exc:
        why = _first_sentence(read_exc)
        return ModelUnavailable(
            f"checkpoint file {given} is not a model checkpoint or is damaged "
            f"({why}); download it again (.bin, .pt or .safetensors)"
        )
    try:
        blank = open_clip.create_model(name, pretrained=None, device="cpu")
    except Exception:  # the architecture itself does not build: open_clip's reason
        return ModelUnavailable(f"cannot build model '{name}' ({reason})")
    wanted = {k: tuple(v.shape) for k, v in blank.state_dict().items()}
    missing = [k for k in wanted if k not in shapes]
    unexpected = [k for k in shapes if k not in wanted]
    resized = [k for k in wanted if k in shapes and shapes[k] != wanted[k]]
    if not (missing or unexpected or resized):
        return ModelUnavailable(f"cannot load checkpoint {given} into model '{name}' ({reason})")
    parts = [
        f"{len(keys)} {what} (e.g. {keys[0]})"
        for keys, what in (
            (missing, "missing keys"),
            (unexpected, "unexpected keys"),
            (resized, "keys of another shape"),
        )
        if keys
    ]
    return ModelUnavailable(
        f"checkpoint {given} does not match model '{name}': {', '.join(parts)}; "
        "set PIXSEARCH_MODEL to the architecture the checkpoint was made for"
    )


def _first_sentence(exc: BaseException) -> str:
    """The error's type and the first sentence of its message, at most one short line."""
    lines = str(exc).strip().splitlines()
    first = lines[0].split(". ")[0] if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return textwrap.shorten(text, 100, placeholder="...")
