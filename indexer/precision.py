"""Which device and precision the CLIP model runs in, and why.

`auto` device: CUDA where present, MPS on Apple silicon, else the CPU. `auto` precision on
CUDA and MPS is float16. On the CPU it is measured once per (model, CPU): a small
calibration batch (generated pictures and texts) is embedded in float32 and in each
candidate precision this CPU and install offer (bf16 where the CPU has native bfloat16, int8
where ONNX Runtime is installed); a candidate qualifies only if every embedding stays within
cosine 0.99 of float32, and the fastest qualifying one wins. The choice is kept in the home
(`precision.json`) so later loads don't measure again, and `pixsearch status` reports it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer.errors import ModelUnavailable
from indexer.types import Embeddings, Pixels

log = logging.getLogger(__name__)

#: Every embedding of a candidate must be at least this close (cosine) to float32's.
MIN_COSINE = 0.99
#: The file in the home that remembers the choice per (model, CPU).
STORE_NAME = "precision.json"
#: Instruction-set flags that decide which precisions run fast (from /proc/cpuinfo).
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
#: Precisions, fastest-looking first only for the report's order; the choice is measured.
CPU_CANDIDATES = ("fp32", "bf16", "int8")


def choose_device(requested: str, cuda: bool, mps: bool) -> str:
    """The torch device for `requested` ("auto", "cpu", "cuda", "mps") given what exists."""
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda" and not cuda:
        raise ModelUnavailable("PIXSEARCH_DEVICE=cuda, but no CUDA device is available")
    if requested == "mps" and not mps:
        raise ModelUnavailable(
            "PIXSEARCH_DEVICE=mps, but no Apple GPU (MPS) is available to this torch"
        )
    return requested


def fixed_precision(requested: str, device: str) -> str | None:
    """The precision when no measurement is needed: forced, or `auto` on a GPU; None when
    `auto` must be calibrated on this CPU."""
    if requested == "int8" and device != "cpu":
        raise ModelUnavailable(f"PIXSEARCH_PRECISION=int8 runs on the CPU only, not on {device}")
    if requested != "auto":
        return requested
    return None if device == "cpu" else "fp16"


def fixed_reason(requested: str, device: str) -> str:
    """Why a precision that needs no measurement runs."""
    if requested == "auto":
        return f"auto: float16 on {device}"
    return "forced by PIXSEARCH_PRECISION"


def available_devices() -> tuple[bool, bool]:
    """(CUDA, MPS): which accelerators this torch can use."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available(), bool(mps is not None and mps.is_available())


def cpu_candidates(has_bf16: bool, int8_missing: str | None) -> dict[str, str | None]:
    """Each CPU precision with None when it can run here, else why not."""
    return {
        "fp32": None,
        "bf16": None if has_bf16 else "no native bfloat16 on this CPU (AVX-512 BF16 or AMX)",
        "int8": int8_missing,
    }


def isa_flags(cpuinfo: str | None = None) -> list[str]:
    """The instruction sets in ISA_FLAGS this CPU has."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in ISA_FLAGS if f in flags]


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name (or the machine type where /proc/cpuinfo has none)."""
    import platform

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_signature() -> str:
    """What the precision choice depends on: the CPU, its instruction sets, the cores, and a
    oneDNN instruction-set cap (which emulates an older CPU) if one is set."""
    parts = [cpu_name(), "+".join(isa_flags()), f"{os.cpu_count()} cores"]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if cap:
        parts.append(f"ONEDNN_MAX_CPU_ISA={cap}")
    return ", ".join(parts)


class Candidate(Protocol):
    """One way to run the model: embeds prepared pictures and texts into unit rows."""

    def embed_pixels(self, pixels: Pixels) -> Embeddings: ...

    def embed_texts(self, texts: Sequence[str]) -> Embeddings: ...


@dataclass(frozen=True, slots=True)
class Trial:
    """One candidate's calibration: its worst cosine to float32 and its speed."""

    precision: str
    min_cosine: float | None = None
    images_per_second: float | None = None
    refused: str | None = None  # why it can't be used; None when it qualified


@dataclass(frozen=True, slots=True)
class Choice:
    """The precision that runs, and why."""

    precision: str
    reason: str
    trials: tuple[Trial, ...] = field(default_factory=tuple)
    cpu: str = ""
    when: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Choice:
        """The inverse of `as_json`."""
        trials = tuple(Trial(**t) for t in data.get("trials", ()))
        return cls(
            str(data["precision"]),
            str(data["reason"]),
            trials,
            str(data.get("cpu", "")),
            float(data.get("when", 0.0)),
        )


CALIBRATION_TEXTS = (
    "a dog on a beach",
    "a red car parked in the street",
    "a bowl of fruit on a wooden table",
    "mountains under a cloudy sky",
    "a child blowing out birthday candles",
    "a black and white portrait of an old man",
    "a city skyline at night",
    "a close-up of a yellow flower",
)


def calibration_pixels(size: int, count: int = 8) -> Pixels:
    """`count` generated pictures of `size`x`size` (uint8 RGB), photo-like in their mix of
    smooth gradients, edges and texture, the same on every call."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-120, 120, (2, 3))
        img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[disc] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 4 + 6 * i, img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _min_cosine(got: Embeddings, want: Embeddings) -> float:
    if got.shape != want.shape or not np.isfinite(got).all():
        return float("-inf")
    return float((got * want).sum(axis=1).min())


def calibrate(
    reference: Candidate,
    candidates: Mapping[str, Callable[[], Candidate] | str],
    pixels: Pixels,
    texts: Sequence[str] = CALIBRATION_TEXTS,
    repeats: int = 2,
) -> Choice:
    """Measure each candidate (a builder, or why it can't run here) against `reference`
    (float32) on `pixels` and `texts`; the fastest within MIN_COSINE of float32 wins, and
    float32 itself when none qualifies."""
    want_images, want_texts = reference.embed_pixels(pixels), reference.embed_texts(texts)
    trials: list[Trial] = []
    for name, build in candidates.items():
        if isinstance(build, str):
            trials.append(Trial(name, refused=build))
            continue
        try:
            runner = build()
            got = runner.embed_pixels(pixels)  # warm-up, and the images' fidelity
            cosine = min(
                _min_cosine(got, want_images), _min_cosine(runner.embed_texts(texts), want_texts)
            )
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                runner.embed_pixels(pixels)
                best = min(best, time.perf_counter() - start)
            del runner
        except Exception as exc:  # each runtime has its own error types; fp32 remains
            trials.append(Trial(name, refused=f"failed to run: {exc}"))
            continue
        speed = len(pixels) / max(best, 1e-9)
        refused = None
        if cosine < MIN_COSINE:
            refused = f"an embedding drifted to cosine {cosine:.4f} of float32 (< {MIN_COSINE})"
        trials.append(Trial(name, round(cosine, 6), round(speed, 2), refused))
    qualified = [t for t in trials if t.refused is None]
    if not qualified:
        return Choice("fp32", "no candidate kept fidelity: float32", tuple(trials))
    best_trial = max(qualified, key=lambda t: t.images_per_second or 0.0)
    others = ", ".join(
        f"{t.precision} {t.images_per_second:.1f}" for t in qualified if t is not best_trial
    )
    reason = (
        f"auto: fastest within cosine {MIN_COSINE} of float32 on this CPU "
        f"({best_trial.precision} {best_trial.images_per_second:.1f} img/s"
        + (f"; {others}" if others else "")
        + ")"
    )
    return Choice(best_trial.precision, reason, tuple(trials))


class ChoiceStore:
    """`precision.json` in the home: the calibrated choice per (model, CPU signature)."""

    def __init__(self, home: Path) -> None:
        self.path = home / STORE_NAME

    @staticmethod
    def key(model_key: str, signature: str) -> str:
        """The entry's name."""
        return f"{model_key} @ {signature}"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, model_key: str, signature: str) -> Choice | None:
        """The remembered choice, or None (never measured, or the file is unreadable)."""
        entry = self._read().get(self.key(model_key, signature))
        if not isinstance(entry, dict):
            return None
        try:
            return Choice.from_json(entry)
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, model_key: str, signature: str, choice: Choice) -> None:
        """Remember `choice` (atomically; a home that can't be written is only logged)."""
        data = self._read()
        data[self.key(model_key, signature)] = choice.as_json()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{STORE_NAME}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.info("cannot remember the precision choice in %s: %s", self.path, exc)
