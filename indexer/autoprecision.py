"""`auto` precision on the CPU: calibrate once per (model, CPU), remember it in the home.

The measuring rule is `indexer/precision.py:calibrate`; this module builds the candidates
from a loaded model and keeps the result (in the home's `precision.json`, and for the process).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.errors import ModelUnavailable
from indexer.precision import (
    Candidate,
    Choice,
    ChoiceStore,
    available_devices,
    calibrate,
    calibration_pixels,
    choose_device,
    cpu_candidates,
    cpu_signature,
    fixed_precision,
    fixed_reason,
)
from indexer.runners import RUNNERS, Parts, TorchRunner

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger(__name__)

# Choices made in this process by encoders without a home (tests, benchmarks), by store key.
_made: dict[str, Choice] = {}
_made_lock = threading.Lock()


def int8_cache() -> Path:
    """Where the int8 graphs are kept: derived from the checkpoints, safe to delete."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("pixsearch", appauthor=False)) / "int8"


def int8_graph_name(key: str, pretrained: str) -> str:
    """The int8 graphs' file-name stem for this model and checkpoint."""
    from indexer.int8 import graph_name

    return graph_name(key, pretrained)


def remembered(home: Path | None, model_key: str) -> Choice | None:
    """The choice made for this model on this CPU (in this process or in `home`), if any."""
    signature = cpu_signature()
    if home is not None:
        return ChoiceStore(home).get(model_key, signature)
    with _made_lock:
        return _made.get(ChoiceStore.key(model_key, signature))


def describe(settings: Settings) -> dict[str, Any]:
    """Which device and precision these settings run in and why, without loading the model
    (`pixsearch status`)."""
    from indexer.encoder import model_key

    try:
        found = (False, False) if settings.device == "cpu" else available_devices()
        device = choose_device(settings.device, *found)
        fixed = fixed_precision(settings.precision, device)
    except ModelUnavailable as exc:
        return {"device": settings.device, "precision": None, "precision_reason": str(exc)}
    if fixed is not None:
        reason = fixed_reason(settings.precision, device)
        return {"device": device, "precision": fixed, "precision_reason": reason}
    choice = remembered(settings.home, model_key(settings.model, settings.pretrained))
    if choice is None:
        return {
            "device": device,
            "precision": None,
            "precision_reason": "auto: measured when the model is first loaded on this CPU",
        }
    return {
        "device": device,
        "precision": choice.precision,
        "precision_reason": choice.reason,
        "precision_trials": [asdict(t) for t in choice.trials],
    }


def calibrated_choice(model: Any, parts: Parts, model_key: str, home: Path | None) -> Choice:
    """The remembered choice for (model, this CPU), or a new calibration, remembered."""
    signature = cpu_signature()
    choice = remembered(home, model_key)
    if choice is not None and _still_possible(choice.precision):
        log.info("precision %s remembered for %s on this CPU", choice.precision, model_key)
        return choice
    start = time.perf_counter()
    choice = calibrate_model(model, parts)
    choice = Choice(choice.precision, choice.reason, choice.trials, signature, time.time())
    log.info("calibrated %s in %.1f s: %s", model_key, time.perf_counter() - start, choice.reason)
    if home is not None:
        ChoiceStore(home).put(model_key, signature, choice)
    else:
        with _made_lock:
            _made[ChoiceStore.key(model_key, signature)] = choice
    return choice


def calibrate_model(
    model: Any, parts: Parts, extra: dict[str, Callable[[], Candidate] | str] | None = None
) -> Choice:
    """Calibrate the CPU candidates for `model` (float32, on the CPU, not packed; left as
    it is), plus `extra` ones (tests: a deliberately broken candidate)."""
    import torch

    from indexer import int8
    from indexer.encoder import cpu_has_bf16

    # Plain float32 torch, unpacked: what every candidate must agree with.
    if parts.preprocess is None:
        raise ValueError("calibration needs the image tower")
    reference = TorchRunner(model, parts, "cpu", torch.float32, pack=False)
    candidates: dict[str, Callable[[], Candidate] | str] = {}
    for name, missing in cpu_candidates(cpu_has_bf16(), int8.available()).items():
        candidates[name] = missing if missing else _builder(name, model, parts)
    candidates.update(extra or {})
    pixels = calibration_pixels(parts.preprocess.size)
    return calibrate(reference, candidates, pixels)


def _builder(name: str, model: Any, parts: Parts) -> Callable[[], Candidate]:
    def build() -> Candidate:
        # A copy: the candidates convert and pack their model in place.
        return RUNNERS[name](copy.deepcopy(model), parts, "cpu")  # type: ignore[no-any-return]

    return build


def _still_possible(precision: str) -> bool:
    """Whether a remembered choice can still run (ONNX Runtime may have been uninstalled)."""
    if precision != "int8":
        return True
    from indexer import int8

    missing = int8.available()
    if missing:
        log.warning("the remembered int8 precision can't run (%s): measuring again", missing)
    return missing is None
