"""A bounded load test of the HTTP API: concurrent clients, mixed queries, loopback only.

Starts `pixsearch serve` on 127.0.0.1 over a home it builds (a synthetic home: N images with
random unit embeddings, dates, cameras, sizes) unless `--url` names a running server, then runs
`--clients` concurrent clients for `--seconds` seconds, each sending a seeded random mix of

  text      POST /search {"text": ..., "k": 20}
  similar   GET  /images/{id}/similar?k=20
  filtered  POST /search {"text": ..., "k": 20, "filters": {dates, camera, size, format, folder}}

and prints requests, errors, throughput and latency percentiles per kind (a table, or `--json`).
Every answer must be a 200 with well-formed results: the exit status is 1 if any is not.

    uv run python benchmarks/load_test.py                         # 16 clients, 60 s, 20k images
    uv run python benchmarks/load_test.py --seconds 5 --images 2000 --json
    uv run python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 4

The default model is the test suite's tiny open_clip model (embed_dim 32, random weights), so
the figures measure the service (HTTP, SQLite, FAISS, reranking), not CLIP; `--model ViT-B-32`
uses that architecture with seeded random weights (no download) for a realistic text encoder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `uv run python benchmarks/load_test.py` from anywhere
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

KINDS = ("text", "similar", "filtered")
WEIGHTS = (0.4, 0.3, 0.3)
HEADERS: dict[str, str] = {}
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
ADJECTIVES = ["red", "old", "small", "sunny", "snowy", "busy", "quiet", "blue", "wet", "golden"]
THINGS = ["dog", "car", "bicycle", "house", "boat", "cat", "child", "tree", "bridge", "cake"]
PLACES = ["on a beach", "in a park", "at night", "in the rain", "in a kitchen", "by a lake"]


# -- the home and the server ------------------------------------------------------------------
def _model_files(model: str, pretrained: str | None, folder: Path) -> tuple[str, str]:
    """(PIXSEARCH_MODEL, PIXSEARCH_PRETRAINED): given ones, or seeded random weights."""
    if pretrained:
        return model, pretrained
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    name = model
    if model == "tiny":
        config = folder / "pixsearch-load-tiny.json"
        config.write_text(json.dumps(TINY))
        open_clip.add_model_config(config)
        name, model = config.stem, str(config)
    checkpoint = folder / f"{name}-random-seed0.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), checkpoint)
    return model, str(checkpoint)


def build_home(folder: Path, images: int, model: str, pretrained: str | None) -> dict[str, str]:
    """A synthetic home of `images` images; returns the PIXSEARCH_* environment that uses it."""
    import numpy as np

    from indexer.encoder import get_encoder
    from indexer.settings import Settings
    from tests.fakes import synthetic_home

    model, pretrained = _model_files(model, pretrained, folder / "model")
    env = {
        "PIXSEARCH_HOME": str(folder / "home"),
        "PIXSEARCH_MODEL": model,
        "PIXSEARCH_PRETRAINED": pretrained,
        "PIXSEARCH_CAPTIONER": "none",
        "PIXSEARCH_API_KEY": "",
    }
    settings = Settings(
        home=folder / "home", model=model, pretrained=pretrained, captioner="none", api_key=None
    )
    encoder = get_encoder(settings).load()
    # Clustered vectors, like a photo collection (bursts, similar scenes), not uniform noise.
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(1, images // 50), encoder.dim))
    vectors = centres[rng.integers(0, len(centres), images)] + 0.5 * rng.standard_normal(
        (images, encoder.dim)
    )
    synthetic_home(settings, encoder.key, vectors.astype(np.float32), folder / "photos")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(env: dict[str, str], log: Path) -> Iterator[str]:
    """`pixsearch serve` on a free loopback port, stopped (and waited for) on exit."""
    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(url: str, timeout: float = 300.0) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            res = httpx.get(f"{url}/ready", timeout=10, headers=HEADERS)
            if res.status_code == 200:
                return dict(res.json())
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"load_test: the server at {url} did not get ready")
        time.sleep(0.2)


# -- the load ---------------------------------------------------------------------------------
@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    samples: list[str] = field(default_factory=list)  # the first few errors, for the report


def _phrase(rng: random.Random) -> str:
    return f"a {rng.choice(ADJECTIVES)} {rng.choice(THINGS)} {rng.choice(PLACES)}"


def _filters(rng: random.Random, folder: str | None) -> dict:
    choice = rng.randrange(5)
    if choice == 0:
        start = rng.randrange(0, 50)
        return {
            "taken_after": f"{2020 + start // 12}-{start % 12 + 1:02d}-01",
            "taken_before": f"{2021 + start // 12}-{start % 12 + 1:02d}-28",
        }
    if choice == 1:
        return {"camera": rng.choice(["canon", "nikon"])}
    if choice == 2:
        return {"min_width": rng.choice([641, 642])}
    if choice == 3:
        return {"format": "jpeg", "min_height": 480}
    return {"path_prefix": folder} if folder else {"format": "jpg"}


async def client(
    n: int, url: str, ids: list[int], folder: str | None, until: float, stats: Stats, seed: int
) -> None:
    import httpx

    rng = random.Random(seed * 1000 + n)
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=HEADERS) as http:
        while time.monotonic() < until:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            started = time.perf_counter()
            try:
                if kind == "text":
                    res = await http.post("/search", json={"text": _phrase(rng), "k": 20})
                elif kind == "similar":
                    res = await http.get(f"/images/{rng.choice(ids)}/similar", params={"k": 20})
                else:
                    body = {"text": _phrase(rng), "k": 20, "filters": _filters(rng, folder)}
                    res = await http.post("/search", json=body)
                ok = res.status_code == 200 and isinstance(res.json().get("results"), list)
                why = f"{kind}: HTTP {res.status_code} {res.text[:120]}"
            except (httpx.HTTPError, ValueError) as exc:
                ok, why = False, f"{kind}: {type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - started
            stats.latencies[kind].append(elapsed)
            if not ok:
                stats.errors[kind] += 1
                if len(stats.samples) < 5:
                    stats.samples.append(why)


async def run_load(
    url: str, clients: int, seconds: float, ids: list[int], folder: str | None, seed: int
) -> tuple[Stats, float]:
    stats = Stats()
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(client(n, url, ids, folder, until, stats, seed) for n in range(clients)))
    return stats, time.monotonic() - started


def _known_ids(url: str) -> tuple[list[int], str | None]:
    """Ids to ask "more like this" about, and a folder to filter on, from the server itself."""
    import httpx

    body = {"text": "a photo", "k": 200, "cutoff": False}
    res = httpx.post(f"{url}/search", json=body, timeout=60, headers=HEADERS)
    res.raise_for_status()
    hits = res.json()["results"]
    if not hits:
        raise SystemExit(f"load_test: the server at {url} has no images")
    return [h["id"] for h in hits], os.path.dirname(hits[0]["path"])


# -- the report -------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarise(stats: Stats, elapsed: float) -> dict:
    rows = {}
    every: list[float] = []
    for kind in (*KINDS, "all"):
        values = every if kind == "all" else stats.latencies[kind]
        if kind != "all":
            every.extend(values)
        errors = sum(stats.errors.values()) if kind == "all" else stats.errors[kind]
        rows[kind] = {
            "requests": len(values),
            "errors": errors,
            "per_second": round(len(values) / elapsed, 1),
            "p50_ms": round(_percentile(values, 50) * 1000, 1),
            "p90_ms": round(_percentile(values, 90) * 1000, 1),
            "p99_ms": round(_percentile(values, 99) * 1000, 1),
            "max_ms": round(max(values, default=0.0) * 1000, 1),
        }
    return rows


def table(rows: dict) -> str:
    head = f"{'kind':<9} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} "
    head += f"{'p99 ms':>8} {'max ms':>8}"
    lines = [head, "-" * len(head)]
    for kind, r in rows.items():
        lines.append(
            f"{kind:<9} {r['requests']:>9} {r['errors']:>7} {r['per_second']:>8} "
            f"{r['p50_ms']:>8} {r['p90_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running server on this machine (default: start one)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--seconds", type=float, default=60.0, help="duration (default 60)")
    p.add_argument("--images", type=int, default=20_000, help="synthetic home size")
    p.add_argument("--model", default="tiny", help="tiny (default) or an open_clip architecture")
    p.add_argument("--pretrained", help="a checkpoint file for --model (default: random weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the query mix")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    p.add_argument("--api-key", help="the key of a --url server that requires one")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 3600:
        p.error("--clients must be 1..256 and --seconds 0..3600")

    info: dict = {"clients": args.clients, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="pixsearch-load-") as tmp:
        if args.url:
            from api.security import is_loopback

            host = urlsplit(args.url).hostname or ""
            if not is_loopback(host):
                p.error(f"--url must be a loopback address (127.0.0.1, ::1, localhost), not {host}")
            if args.api_key:
                HEADERS["X-API-Key"] = args.api_key
            stack = _nothing(args.url.rstrip("/"))
        else:
            built = time.perf_counter()
            env = build_home(Path(tmp), args.images, args.model, args.pretrained)
            info.update(images=args.images, home_seconds=round(time.perf_counter() - built, 1))
            stack = server(env, Path(tmp) / "server.log")
        with stack as url:
            ready = wait_ready(url)
            info.update(model=ready["model"], index=ready["index"], images=ready["images"])
            ids, folder = _known_ids(url)
            if args.warmup > 0:
                asyncio.run(run_load(url, args.clients, args.warmup, ids, folder, args.seed + 1))
            stats, elapsed = asyncio.run(
                run_load(url, args.clients, args.seconds, ids, folder, args.seed)
            )
    rows = summarise(stats, elapsed)
    if args.json:
        print(json.dumps({**info, "results": rows, "error_samples": stats.samples}))
    else:
        print(
            f"{info['clients']} clients for {elapsed:.1f} s against {info['images']} images "
            f"(model {info['model']}, index {info['index']})"
        )
        print(table(rows))
        for sample in stats.samples:
            print(f"  error: {sample}")
    return 1 if rows["all"]["errors"] else 0


@contextmanager
def _nothing(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    sys.exit(main())
