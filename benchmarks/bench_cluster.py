"""Indexing on Ray against indexing locally: the same folder, the same model, fresh homes.

The folder: the first ``--count`` photos of ``--photos`` (default 200 of the 1,000 ImageNet
samples in /work/shared/photos/imagenet-1k), copied into a temporary folder (never into the
repository). The model: ViT-B-32 with seeded random weights (throughput does not depend on
the weights; see bench_index.py). Each side runs `pixsearch index FOLDER --json` in a fresh
process, as a user runs it, into a fresh home:

- ``local``: no Ray (threaded reading, the model in this process);
- ``ray-local``: ``--ray local``: the command starts a one-machine Ray cluster itself;
- ``ray-running``: ``--ray ADDRESS`` of a cluster started before (``ray start --head``): the
  overhead a run pays on a cluster that is up already (joining, starting the actors, the
  model loaded in each, moving pixels through the object store);
- ``ray-2-nodes``: a cluster of two nodes simulated on this machine with
  ``ray.cluster_utils.Cluster`` (each node half the CPUs), joined the same way.

For each it reports the run's own time (the summary's ``seconds``: scan to last write, what
the images/s figure is computed from), the command's wall time (with Python start-up, the
model loaded in the driver and, for ``ray-local``, the cluster's start), and the ratio of
images/s to the local run's in the same invocation. On one small machine Ray can only add
overhead: its point is more machines (and GPUs); this measures what that overhead costs.

    uv run python benchmarks/bench_cluster.py                 # table
    uv run python benchmarks/bench_cluster.py --json          # JSON
    uv run python benchmarks/bench_cluster.py --count 100 --sides local ray-running
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

DEFAULT_PHOTOS = Path("/work/shared/photos/imagenet-1k")
SIDES = ("local", "ray-local", "ray-running", "ray-2-nodes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def index(folder: Path, work: Path, env: dict[str, str], *flags: str) -> dict[str, Any]:
    """`pixsearch index FOLDER --json FLAGS` into a fresh home; its summary and wall time."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "--home",
            str(home),
            "index",
            str(folder),
            "--json",
            *flags,
        ],
        cwd=common.ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - start
    shutil.rmtree(home, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"pixsearch index {' '.join(flags)} failed: {proc.stderr.strip()}")
    summary = json.loads(proc.stdout)
    if summary["failed"]:
        raise SystemExit(f"{len(summary['failed'])} files failed: {summary['failed'][:3]}")
    return {
        "images": summary["added"],
        "seconds": summary["seconds"],
        "images_per_second": summary["images_per_second"],
        "wall_seconds": round(wall, 2),
        "loadavg_after": round(os.getloadavg()[0], 2),
    }


class HeadNode:
    """`ray start --head --block` on 127.0.0.1, with a token of its own; stopped on exit."""

    def __init__(self, cpus: int, temp: Path) -> None:
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        temp.mkdir(parents=True, exist_ok=True)
        self.log = temp / "head.log"
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("ray")),
                "start",
                "--head",
                f"--port={self.port}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={cpus}",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={temp}",
                "--block",
            ],
            env={**os.environ, **self.env, "RAY_AUTH_MODE": "token"},
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ray start failed: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    @property
    def env(self) -> dict[str, str]:
        return {"RAY_AUTH_TOKEN": self.token, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()  # `ray start --block` stops what it started
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def two_nodes(folder: Path, work: Path, base_env: dict[str, str]) -> dict[str, Any]:
    """Index through a two-node cluster simulated in this process (ray.cluster_utils)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a cluster of this process's own, on loopback
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    from ray.cluster_utils import Cluster

    cpus = max(2, os.cpu_count() or 2)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus // 2, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=cpus - cpus // 2)
        cluster.wait_for_nodes()
        env = {**base_env, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
        result = index(folder, work, env, "--ray", cluster.address)
        result["nodes"] = 2
        return result
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    checkpoint = common.random_checkpoint(args.model)
    # Short: Ray's Unix sockets live under it.
    work = Path(tempfile.mkdtemp(prefix="bc", dir="/tmp"))
    folder = work / "photos"
    folder.mkdir()
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    for src in photos[: args.count]:
        shutil.copyfile(src, folder / src.name)
    env = {
        "PIXSEARCH_MODEL": args.model,
        "PIXSEARCH_PRETRAINED": str(checkpoint),
        "PIXSEARCH_DEVICE": "cpu",
        "PIXSEARCH_CAPTIONER": "none",
    }
    results: dict[str, Any] = {}
    try:
        for side in args.sides:
            common.log(f"{side}: indexing {args.count} photos")
            if side == "local":
                results[side] = index(folder, work, env)
            elif side == "ray-local":
                results[side] = index(folder, work, env, "--ray", "local")
            elif side == "ray-running":
                head = HeadNode(os.cpu_count() or 2, work / "ray")
                try:
                    results[side] = index(folder, work, {**env, **head.env}, "--ray", head.address)
                finally:
                    head.stop()
            else:
                results[side] = two_nodes(folder, work, env)
            common.log(f"{side}: {results[side]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results.get("local", {}).get("images_per_second")
    for r in results.values():
        r["vs_local"] = round(r["images_per_second"] / base, 3) if base else None
    payload = {"machine": common.machine(), "count": args.count, "model": args.model, **results}
    if args.json:
        common.dump_json(payload)
        return
    m = payload["machine"]
    common.print_table(
        f"Indexing {args.count} photos, {args.model} (random weights), {m['cpu']}, "
        f"{m['cores']} cores, load average {m['loadavg']:.1f}",
        ["side", "images", "run s", "images/s", "vs local", "wall s", "load after"],
        [
            [
                side,
                r["images"],
                r["seconds"],
                r["images_per_second"],
                r["vs_local"],
                r["wall_seconds"],
                r["loadavg_after"],
            ]
            for side, r in results.items()
        ],
    )


if __name__ == "__main__":
    main()
