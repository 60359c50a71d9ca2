"""Shared helpers of the benchmark scripts: model checkpoint, settings, tables, JSON, RSS."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `uv run python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: Where a random-weights checkpoint is cached between runs (never inside the repository).
DEFAULT_CHECKPOINT_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "pixsearch-bench"


def random_checkpoint(model: str = "ViT-B-32", folder: Path = DEFAULT_CHECKPOINT_DIR) -> Path:
    """A checkpoint of `model` with seeded random weights (benchmarks never download weights)."""
    path = folder / f"{model}-random-seed0.pt"
    if path.is_file():
        return path
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = open_clip.create_model(model, pretrained=None)
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)
    return path


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import faiss
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    simd = ""
    if hasattr(faiss, "SIMDConfig"):
        try:
            simd = str(faiss.SIMDConfig.get_level_name())
        except Exception:
            simd = ""
    from indexer.precision import isa_flags

    flags = isa_flags()
    return {
        "cpu": cpu or platform.processor(),
        "cpu_class": cpu_class(flags),
        "isa": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "faiss": getattr(faiss, "__version__", "?"),
        "faiss_simd": simd,
        "python": platform.python_version(),
        "loadavg": os.getloadavg()[0],
    }


def cpu_class(flags: list[str]) -> str:
    """The CPU class the README's tables are per: AMX, AVX-512 BF16, AVX-512, AVX2, older; with
    the oneDNN/MKL cap that emulates an older one, if set."""
    if "amx_bf16" in flags:
        name = "AMX"
    elif "avx512_bf16" in flags:
        name = "AVX-512 BF16"
    elif "avx512f" in flags:
        name = "AVX-512"
    elif "avx2" in flags:
        name = "AVX2"
    else:
        name = "pre-AVX2"
    if os.environ.get("PIXSEARCH_BENCH_CPUID") == "avx2":
        return f"AVX2, emulated on an {name} CPU (CPUID limited: emulate_avx2.py)"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{name}, emulating {cap} (ONEDNN_MAX_CPU_ISA; torch only)" if cap else name


@contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t: ...` then t[0] is the elapsed wall time in seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def dump_json(payload: dict[str, Any]) -> None:
    """The --json output: one object on stdout."""
    print(json.dumps(payload, indent=2, default=str))


def log(message: str) -> None:
    """Progress on stderr (stdout is for the table or the JSON)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)
