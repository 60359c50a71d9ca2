"""What this machine allows for indexing: the model at the GEMM peak, plus reading photos.

Indexing a photo costs CPU time in two places: the image model, and reading the file
(read, hash, reduced-scale decode, resize). This measures both on the machine at hand:

- ``gemm_peak_gflops``: the packed oneDNN linear kernel (what pixsearch's model runs) on
  the ViT-B MLP shape (64 images x 50 tokens, 768 -> 3072), all cores, best of 3;
- ``model_gflop_per_image``: FLOPs of one ``encode_image`` (torch's FlopCounterMode on the
  plain open_clip model);
- ``model_bound``: images/s if every one of those FLOPs ran at the GEMM peak (attention,
  norms and activations are not free, so no implementation reaches it);
- ``model``: images/s of pixsearch's encoder alone (``embed_pixels`` on random pixels), in
  its automatic choice; and ``precisions``: the same for each precision this CPU and install
  offer (fp32, bf16, int8), with its ratio to the plain open_clip float32 model (``plain``)
  and its minimum cosine to float32 on those pixels;
- ``read_ms``: CPU milliseconds per photo of pixsearch's read stage, one thread;
- ``end_to_end_bound``: images/s on all cores if the model ran at ``model_bound`` and the
  read stage cost ``read_ms``, with no other overhead: the ceiling for indexing in bf16 (or
  fp32 where the CPU has no bf16). int8 has no such bound here (its GEMM peak is not
  measured); ``end_to_end_at`` gives, per precision, the same bound at its measured model
  speed: what indexing would reach if reading were the only other cost.

    uv run python benchmarks/ceiling.py --photos DIR [--json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

from indexer.encoder import ClipEncoder


def gemm_peak_gflops(dtype_name: str, seconds: float = 1.0) -> float:
    """GFLOPS of the packed linear kernel on a ViT-B MLP-sized product (best of 3)."""
    import torch

    from indexer.packed import pack_for_cpu

    dtype = getattr(torch, dtype_name)
    m, k, n = 64 * 50, 768, 3072
    layer = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)).to(dtype).eval()
    if not pack_for_cpu(layer):
        common.log("packed kernels unavailable: measuring plain torch.nn.Linear")
    x = torch.randn(m, k).to(dtype)
    best = 0.0
    with torch.inference_mode():
        layer(x)
        for _ in range(3):
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                layer(x)
                calls += 1
            best = max(best, 2 * m * k * n * calls / (time.perf_counter() - start) / 1e9)
    return best


def model_gflop_per_image(model: str) -> float:
    """FLOPs (in billions) of one image through the plain open_clip image tower."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = open_clip.create_model(model, pretrained=None).eval()
    size = net.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    counter = FlopCounterMode(display=False)
    # With gradients on, nn.MultiheadAttention skips its fused inference kernel, which the
    # counter can't see into, and runs as linears + attention, which it counts.
    with torch.enable_grad(), counter:
        net.encode_image(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def model_speed(encoder: Any, batch: int = 64, seconds: float = 8.0, size: int = 0) -> float:
    """Images/s of the encoder alone, as pixsearch runs it (or any `embed_pixels`)."""
    s = size or encoder.preprocess.size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    encoder.embed_pixels(pixels)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encoder.embed_pixels(pixels)
        done += batch
    return done / (time.perf_counter() - start)


class PlainOpenClip:
    """The plain open_clip float32 model, fed the same pixels (its own normalisation)."""

    def __init__(self, model: str, checkpoint: Path) -> None:
        import open_clip

        self.net = open_clip.create_model(model, pretrained=str(checkpoint)).eval()
        cfg = self.net.visual.preprocess_cfg
        self.mean, self.std = cfg["mean"], cfg["std"]

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        with torch.no_grad():
            out = torch.nn.functional.normalize(self.net.encode_image(x), dim=-1)
        return out.numpy()


def precision_rows(model: str, checkpoint: Path, precisions: list[str]) -> dict[str, Any]:
    """Per precision: model images/s, its ratio to plain open_clip float32, min cosine."""
    plain = PlainOpenClip(model, checkpoint)
    size = int(plain.net.visual.image_size[0])
    pixels = np.random.default_rng(1).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    reference = plain.embed_pixels(pixels)
    plain_speed = model_speed(plain, size=size)
    rows: dict[str, Any] = {}
    for p in precisions:
        encoder = ClipEncoder(model, str(checkpoint), device="cpu", precision=p).load()
        speed = model_speed(encoder)
        cosine = float((encoder.embed_pixels(pixels) * reference).sum(axis=1).min())
        rows[p] = {"model": speed, "vs_plain": speed / plain_speed, "min_cosine": cosine}
        del encoder
    return {"plain": plain_speed, "precisions": rows}


def read_ms(paths: list[Path], encoder: ClipEncoder, max_pixels: int = 10**9) -> float:
    """CPU ms per photo of pixsearch's read stage (read, hash, reduced-scale decode, resize)."""
    from indexer.reading import read
    from indexer.types import Failure, FileEntry, Job

    start = time.process_time()
    for path in paths:
        job = Job(FileEntry(str(path), 0, 0), "new")
        done = read(job, set(), encoder.preprocess, max_pixels)
        if isinstance(done, Failure):
            raise SystemExit(f"cannot read {done.path}: {done.error}")
    return (time.process_time() - start) / len(paths) * 1000


def measure(
    model: str,
    checkpoint: Path,
    photo_sets: dict[str, list[Path]],
    precisions: list[str] | None = None,
) -> dict[str, Any]:
    """All the figures above, for each named list of photos."""
    from indexer.encoder import cpu_has_bf16

    dtype = "bfloat16" if cpu_has_bf16() else "float32"
    encoder = ClipEncoder(model, str(checkpoint), device="cpu", precision="fp32").load()
    cores = os.cpu_count() or 1
    peak = gemm_peak_gflops(dtype)
    flops = model_gflop_per_image(model)
    bound = peak / flops
    out: dict[str, Any] = {
        "precision": dtype,
        "cores": cores,
        "gemm_peak_gflops": peak,
        "model_gflop_per_image": flops,
        "model_bound": bound,
        "sets": {},
        **precision_rows(model, checkpoint, precisions or []),
    }
    rows = out["precisions"]
    out["model"] = rows.get("bf16" if dtype == "bfloat16" else "fp32", {}).get("model", 0.0)
    for name, paths in photo_sets.items():
        ms = read_ms(paths[:100], encoder)
        # Core-seconds per image: the model's share (all cores at `bound`) plus reading.
        per_image = cores / bound + ms / 1000
        at = {p: cores / (cores / r["model"] + ms / 1000) for p, r in rows.items()}
        out["sets"][name] = {
            "read_ms": ms,
            "end_to_end_bound": cores / per_image,
            "end_to_end_at": at,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="a folder of photos")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--checkpoint", type=Path, help="default: random weights, cached")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--precisions", default="all", help="comma-separated, or all")
    args = parser.parse_args()
    from bench_index import available_precisions, list_photos

    checkpoint = args.checkpoint or common.random_checkpoint(args.model)
    precisions = available_precisions(args.precisions)
    photos = {args.photos.name: list_photos(args.photos)}
    result = measure(args.model, checkpoint, photos, precisions)
    m = common.machine()
    if args.json:
        common.dump_json({"benchmark": "ceiling", "machine": m, **result})
        return
    print(
        f"machine: {m['cpu']} ({m['cpu_class']}; {'+'.join(m['isa'])}), {m['cores']} cores, "
        f"load average {m['loadavg']:.1f}"
    )
    print_ceiling(result)


def print_ceiling(result: dict[str, Any]) -> None:
    """The ceiling figures as a short text block."""
    print(
        f"\nThis machine's ceiling ({result['cores']} cores, {result['precision']}): GEMM peak "
        f"{result['gemm_peak_gflops']:.0f} GFLOPS; the model needs "
        f"{result['model_gflop_per_image']:.2f} GFLOP per image, so at most "
        f"{result['model_bound']:.1f} img/s; pixsearch's model runs {result['model']:.1f} img/s "
        f"in {result['precision']} ({result['model'] / result['model_bound']:.0%} of that)."
    )
    header = ["precision", "model img/s", "vs plain open_clip fp32", "min cos fp32"]
    rows = [["open_clip fp32 (plain)", result["plain"], "1.00x", "1.0000"]]
    for p, r in result["precisions"].items():
        rows.append([p, r["model"], f"{r['vs_plain']:.2f}x", f"{r['min_cosine']:.4f}"])
    common.print_table("The image model alone, batches of 64 random pictures", header, rows)
    for name, s in result["sets"].items():
        at = ", ".join(f"{p} {v:.1f}" for p, v in s["end_to_end_at"].items())
        print(
            f"  {name}: reading costs {s['read_ms']:.1f} CPU-ms per photo, so indexing can't "
            f"exceed {s['end_to_end_bound']:.1f} img/s in {result['precision']} here; at each "
            f"precision's model speed: {at} img/s"
        )


if __name__ == "__main__":
    main()
