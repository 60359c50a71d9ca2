"""Indexing throughput, end to end (scan, decode, embed, write), against plain open_clip.

Two photo sets:

- ``small``: the real photos in ``--photos`` (default: the 1,000 ImageNet samples in
  /work/shared/photos/imagenet-1k, about 500x375 each), read where they are;
- ``12mp``: the first ``--large-count`` of them re-encoded as 12-megapixel JPEGs (quality 92)
  into a temporary folder (or into ``--large-dir``, reused when it already holds them).

For each set it times, each run in a fresh process (as a user runs it), alternating sides:

- ``pixsearch <precision>``: ``Indexer.run`` into a fresh home: scan, threaded read +
  reduced-scale decode + resize, model in that precision, SQLite writes, FAISS index, final
  save; one side per precision this CPU and install offer (``--precisions``: fp32, bf16 where
  the CPU has native bfloat16, int8 where ONNX Runtime is installed), each with its minimum
  cosine to pixsearch's float32 embeddings of the same 32 photos;
- ``open_clip``: the plain pipeline a user would write: list the folder, full Pillow decode,
  open_clip's own preprocessing transforms, float32 model, batches of 32, one process, the
  embeddings written to an .npy file at the end.

Both use the same ViT-B-32 random-weights checkpoint (throughput does not depend on the
weights); model loading is not timed. The baseline runs with the environment it is given
(libgomp's default spin-waiting OpenMP threads unless OMP_WAIT_POLICY is set); pixsearch
sets OMP_WAIT_POLICY=PASSIVE itself. ``--baseline-passive`` adds a baseline run with
passive waiting too, to show how much of the difference that setting alone makes.
Last it measures this machine's ceiling (benchmarks/ceiling.py): the bf16 GEMM peak, the
model's FLOPs and the CPU cost of reading each photo give the most images per second any
implementation could index here, reported next to pixsearch's figure and as the best speedup
over the baseline this hardware allows (``--skip-ceiling`` to leave it out).
Besides images per second (wall), it reports images per CPU-second (user + system time of
all threads), which depends less on what else the machine is running. Figures on a shared
machine are noisy: compare the ratios from one run, not absolute numbers across runs.

    uv run python benchmarks/bench_index.py                 # table
    uv run python benchmarks/bench_index.py --json          # JSON
    uv run python benchmarks/bench_index.py --sets small --repeat 2
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 uv run python \
        benchmarks/bench_index.py --precisions fp32   # torch paths as on an AVX2-only CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
from baseline import Baseline, cpu_seconds
from ceiling import measure as measure_ceiling
from ceiling import print_ceiling

DEFAULT_PHOTOS = Path("/work/shared/photos/imagenet-1k")


def list_photos(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted."""
    from indexer.imageio import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def make_large(sources: list[Path], out: Path, megapixels: float) -> list[Path]:
    """Re-encode `sources` as JPEGs of about `megapixels` MP into `out` (kept if present)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in sources:
        dst = out / f"{src.stem}_{megapixels:g}mp.jpg"
        paths.append(dst)
        if dst.is_file():
            continue
        with Image.open(src) as im:
            rgb = im.convert("RGB")
        scale = (megapixels * 1e6 / (rgb.width * rgb.height)) ** 0.5
        size = (round(rgb.width * scale), round(rgb.height * scale))
        rgb.resize(size, Image.Resampling.BICUBIC).save(dst, "JPEG", quality=92)
    return paths


def run_pixsearch(folder: Path, checkpoint: Path, work: Path, args: argparse.Namespace) -> dict:
    """Index `folder` into a fresh home in `args.precision`; the timed part is `Indexer.run`.
    Then embed the first 32 photos again and leave the vectors in `args.vectors` (fidelity)."""
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from indexer.pipeline import Indexer
    from indexer.settings import Settings

    home_dir = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    extra: dict[str, Any] = {}
    if args.batch_size:
        extra["batch_size"] = args.batch_size
    if args.workers:
        extra["workers"] = args.workers
    settings = Settings(
        home=home_dir,
        model=args.model,
        pretrained=str(checkpoint),
        device="cpu",
        precision=args.precision,
        **extra,
    )
    encoder = get_encoder(settings).load()
    encoder.embed_pixels(np.zeros((2, encoder.preprocess.size, encoder.preprocess.size, 3), "u1"))
    start, cpu = time.perf_counter(), cpu_seconds()
    report = Indexer(Home(settings), encoder).run([folder])
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if report.failed:
        raise SystemExit(f"pixsearch failed on {len(report.failed)} files: {report.failed[:3]}")
    shutil.rmtree(home_dir, ignore_errors=True)
    np.save(args.vectors, sample_vectors(encoder, folder))
    return {
        "images": report.added,
        "seconds": seconds,
        "images_per_second": report.added / seconds,
        "cpu_seconds": cpu,
        "images_per_cpu_second": report.added / cpu,
        "precision": encoder.precision,
        "batch_size": settings.batch_size,
        "workers": settings.workers or os.cpu_count(),
    }


def sample_vectors(encoder: Any, folder: Path, count: int = 32) -> np.ndarray:
    """`encoder`'s embeddings of the first `count` photos in `folder` (read as pixsearch does)."""
    from indexer.imageio import DRAFT_OVERSAMPLE, decode

    side = encoder.preprocess.size * DRAFT_OVERSAMPLE
    pixels = [
        encoder.prepare(decode(p.read_bytes(), max_pixels=10**9, min_side=side)[0])
        for p in list_photos(folder)[:count]
    ]
    return encoder.embed_pixels(np.stack(pixels))  # type: ignore[no-any-return]


def worker(args: argparse.Namespace) -> None:
    """One timed run in this (fresh) process; prints its result as JSON."""
    checkpoint = Path(args.checkpoint)
    folder = Path(args.folder)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    if args.worker.startswith("pixsearch"):
        result = run_pixsearch(folder, checkpoint, work, args)
    else:
        result = Baseline(args.model, checkpoint).run(folder, work / "baseline.npy")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


def spawn(side: str, folder: Path, checkpoint: Path, work: Path, args: argparse.Namespace,
          env: dict[str, str], precision: str = "auto",
          vectors: Path | None = None) -> dict:  # fmt: skip
    """Run one side in a fresh process."""
    cmd = [
        sys.executable, __file__, "--worker", side, "--folder", str(folder), "--checkpoint",
        str(checkpoint), "--work", str(work), "--model", args.model,
        "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--precision", precision, "--vectors", str(vectors or work / "unused.npy"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--count", type=int, default=1000, help="photos of the small set")
    parser.add_argument("--large-count", type=int, default=200)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--large-dir", type=Path, help="keep the re-encoded photos here")
    parser.add_argument("--sets", default="small,12mp", help="comma-separated: small,12mp")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--checkpoint", type=Path, help="default: random weights, cached")
    parser.add_argument("--batch-size", type=int, default=0, help="pixsearch batch (0: default)")
    parser.add_argument("--workers", type=int, default=0, help="pixsearch decode threads")
    parser.add_argument("--repeat", type=int, default=1, help="alternate runs of each side")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--skip-ceiling", action="store_true", help="don't measure this machine's ceiling"
    )
    parser.add_argument(
        "--baseline-passive", action="store_true", help="also run the baseline with passive OMP"
    )
    parser.add_argument(
        "--precisions",
        default="all",
        help="comma-separated pixsearch precisions, or all (those this CPU and install offer)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--worker", choices=["pixsearch", "open_clip"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    checkpoint = args.checkpoint or common.random_checkpoint(args.model)
    sources = list_photos(args.photos)
    if not sources:
        raise SystemExit(f"no photos in {args.photos}")
    work = Path(tempfile.mkdtemp(prefix="pixsearch-bench-"))
    precisions = available_precisions(args.precisions)
    sides = [f"pixsearch {p}" for p in precisions]
    if not args.skip_baseline:
        sides.append("open_clip")
        if args.baseline_passive:
            sides.append("open_clip+passive")
    try:
        sets: dict[str, Path] = {}
        wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
        if "small" in wanted:
            small = sources[: args.count]
            if len(small) == len(sources):
                sets["small"] = args.photos  # read in place
            else:
                folder = work / "small"
                folder.mkdir()
                for p in small:
                    (folder / p.name).symlink_to(p)
                sets["small"] = folder
        if "12mp" in wanted:
            large_dir = args.large_dir or work / "large"
            common.log(f"re-encoding {args.large_count} photos at {args.megapixels:g} MP")
            make_large(sources[: args.large_count], large_dir, args.megapixels)
            sets["12mp"] = large_dir

        results: dict[str, dict[str, list[dict]]] = {}
        fidelity: dict[str, dict[str, float]] = {}
        for name, folder in sets.items():
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for rep in range(args.repeat):
                for side in sides:
                    common.log(f"{name}: {side} run {rep + 1}")
                    env = dict(os.environ)
                    if side == "open_clip+passive":
                        env["OMP_WAIT_POLICY"] = "PASSIVE"
                    if side.startswith("pixsearch"):
                        precision = side.split()[1]
                        vectors = work / f"{name}-{precision}.npy"
                        run = spawn("pixsearch", folder, checkpoint, work, args, env, precision,
                                    vectors)  # fmt: skip
                    else:
                        run = spawn("open_clip", folder, checkpoint, work, args, env)
                    runs[side].append(run)
            results[name] = runs
            fidelity[name] = min_cosines(work, name, precisions)
        ceiling = None
        if not args.skip_ceiling:
            common.log("measuring this machine's ceiling (GEMM peak, model, reading)")
            ceiling = measure_ceiling(
                args.model, checkpoint, {n: list_photos(f) for n, f in sets.items()}, precisions
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    baselines = [side for side in sides if not side.startswith("pixsearch")]
    ours = [side for side in sides if side.startswith("pixsearch")]
    summary = []
    for name, runs in results.items():
        entry: dict[str, Any] = {"set": name, "images": runs[ours[0]][0]["images"]}
        for side, side_runs in runs.items():
            entry[f"{side}_images_per_second"] = max(r["images_per_second"] for r in side_runs)
            entry[f"{side}_images_per_cpu_second"] = max(
                r["images_per_cpu_second"] for r in side_runs
            )
        for side in ours:
            entry[f"{side}_min_cosine_to_fp32"] = fidelity[name].get(side.split()[1])
            for base in baselines:
                entry[f"{side}_speedup_vs_{base}"] = (
                    entry[f"{side}_images_per_second"] / entry[f"{base}_images_per_second"]
                )
                entry[f"{side}_cpu_speedup_vs_{base}"] = (
                    entry[f"{side}_images_per_cpu_second"] / entry[f"{base}_images_per_cpu_second"]
                )
        if ceiling:
            bound = ceiling["sets"][name]["end_to_end_bound"]
            entry["ceiling_images_per_second"] = bound
            for side in ours:
                entry[f"{side}_share_of_ceiling"] = entry[f"{side}_images_per_second"] / bound
            for base in baselines:
                entry[f"ceiling_speedup_vs_{base}"] = bound / entry[f"{base}_images_per_second"]
        entry["runs"] = runs
        summary.append(entry)
    m = common.machine()
    if args.json:
        payload = {"benchmark": "index", "machine": m, "results": summary, "ceiling": ceiling}
        common.dump_json(payload)
        return
    print(
        f"machine: {m['cpu']} ({m['cpu_class']}; {'+'.join(m['isa'])}), {m['cores']} cores, "
        f"torch {m['torch']}, faiss {m['faiss']} {m['faiss_simd']}, load average "
        f"{m['loadavg']:.1f}; best of {args.repeat} run(s)"
    )
    header = ["set", "images", "side", "img/s", "img/CPU-s", "min cos fp32"]
    header += [f"vs {b}" for b in baselines] + [f"CPU vs {b}" for b in baselines]
    rows = []
    for e in summary:
        for side in sides:
            row = [e["set"], e["images"], side, e[f"{side}_images_per_second"]]
            row.append(e[f"{side}_images_per_cpu_second"])
            cos = e.get(f"{side}_min_cosine_to_fp32")
            row.append(f"{cos:.4f}" if cos is not None else "")
            for key in ("speedup", "cpu_speedup"):
                row += [
                    f"{e[f'{side}_{key}_vs_{b}']:.2f}x" if side in ours else "" for b in baselines
                ]
            rows.append(row)
    common.print_table(
        "Indexing throughput, end to end (vs X = that pixsearch side's img/s / X's)", header, rows
    )
    if ceiling:
        print_ceiling(ceiling)
        for e in summary:
            best = ", ".join(f"{e[f'ceiling_speedup_vs_{b}']:.2f}x {b}" for b in baselines)
            shares = ", ".join(f"{side} {e[f'{side}_share_of_ceiling']:.0%}" for side in ours)
            print(
                f"  {e['set']}: {ceiling['precision']} ceiling "
                f"{e['ceiling_images_per_second']:.1f} img/s "
                f"({best or 'n/a'}); reached: {shares}"
            )


def available_precisions(wanted: str) -> list[str]:
    """The precisions to run: `wanted` (comma-separated), or all this CPU and install offer."""
    from indexer import int8
    from indexer.encoder import cpu_has_bf16
    from indexer.precision import cpu_candidates

    if wanted != "all":
        return [p.strip() for p in wanted.split(",") if p.strip()]
    offered = cpu_candidates(cpu_has_bf16(), int8.available())
    for name, why in offered.items():
        if why:
            common.log(f"skipping {name}: {why}")
    return [name for name, why in offered.items() if why is None]


def min_cosines(work: Path, name: str, precisions: list[str]) -> dict[str, float]:
    """Each precision's minimum cosine to the fp32 side's vectors of the same photos."""
    ref_path = work / f"{name}-fp32.npy"
    if not ref_path.is_file():
        return {}
    ref = np.load(ref_path)
    out = {}
    for p in precisions:
        path = work / f"{name}-{p}.npy"
        if path.is_file():
            out[p] = float((np.load(path) * ref).sum(axis=1).min())
    return out


if __name__ == "__main__":
    main()
