#!/usr/bin/env python3
"""How long one `pixsearch search "..."` takes, as a user runs it (a fresh process each time).

Three ways, interleaved in one run so that the machine's load weighs on all alike:

* ``server``: a `pixsearch serve` runs for the home; the command asks it over HTTP
  (imports no torch, open_clip or FAISS).
* ``text tower``: no server; the command loads only the model's text tower (the default).
* ``both towers``: no server, `PIXSEARCH_TEXT_TOWER_ONLY=false`: the whole model, as
  every text query loaded it before (the baseline).

The model is ViT-B-32 with seeded random weights by default (no download; the timings do
not depend on the weights), or the shipped tiny ``demo`` model (``--model demo``). The
home holds ``--photos`` demo photos. Also reported: the import time of the command's
server path (``python -X importtime``, summed over top-level imports).

    uv run python benchmarks/bench_cli.py [--runs 5] [--model demo] [--json]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, dump_json, log, print_table, random_checkpoint

QUERY = "a large red circle on a blue background"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _timed_search(env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = _cli(env, "-v", "search", QUERY, "-k", "10", "--json")
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"search failed: {done.stderr}")
    return elapsed


def _start_server(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"serving (http://\S+:\d+)", line)
        if found:
            return proc, found.group(1)
    raise SystemExit("serve did not start")


def _import_seconds(env: dict[str, str]) -> tuple[float, bool]:
    """Seconds of imports of a server-answered search; whether torch was among them."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "api.cli", "search", QUERY, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    total = 0
    heavy = False
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            if not name.startswith("  "):  # top-level imports: their cumulative time
                total += int(parts[1])
            heavy = heavy or name.strip() in ("torch", "open_clip", "faiss")
    return total / 1e6, heavy


_LOADS = """
import json, sys, time
from indexer.encoder import ClipEncoder
import open_clip, torch  # imported before the clock starts: only the loads are timed
model, pretrained, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {"text tower": [], "both towers": []}
for _ in range(runs):
    for way, text_only in (("text tower", True), ("both towers", False)):
        start = time.perf_counter()
        ClipEncoder(model, pretrained, text_only=text_only).embed_texts(["a red circle"])
        out[way].append(time.perf_counter() - start)
print(json.dumps(out))
"""


def _load_seconds(env: dict[str, str], runs: int) -> dict[str, list[float]]:
    """Seconds to load the model and embed one text, text tower vs both, in one process
    (imports done first: this is the part of a cold search that the text tower cuts)."""
    import json

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOADS,
            env["PIXSEARCH_MODEL"],
            env.get("PIXSEARCH_PRETRAINED", ""),
            str(runs),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="Timed searches per way.")
    ap.add_argument("--photos", type=int, default=60, help="Demo photos in the home.")
    ap.add_argument("--model", choices=("ViT-B-32", "demo"), default="ViT-B-32")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--loads-only", action="store_true", help="Only the in-process load comparison."
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="pixsearch-bench-cli-") as tmp:
        env = {**os.environ, "PIXSEARCH_HOME": f"{tmp}/home", "PIXSEARCH_CAPTIONER": "none"}
        env.pop("PIXSEARCH_API_KEY", None)
        if args.model == "demo":
            env["PIXSEARCH_MODEL"] = "demo"
        else:
            env["PIXSEARCH_MODEL"] = "ViT-B-32"
            env["PIXSEARCH_PRETRAINED"] = str(random_checkpoint("ViT-B-32"))
        sys.path.insert(0, str(ROOT))
        from indexer.demo import make_demo_photos

        log("model loads, text tower vs both, in one process")
        loads_in_process = _load_seconds(env, args.runs)
        if args.loads_only:
            _report_loads(loads_in_process, args.model)
            return
        make_demo_photos(Path(tmp) / "photos", n=args.photos)
        log(f"indexing {args.photos} photos with {args.model}")
        indexed = _cli(env, "index", f"{tmp}/photos", "--json")
        if indexed.returncode != 0:
            raise SystemExit(f"index failed: {indexed.stderr}")
        both = {**env, "PIXSEARCH_TEXT_TOWER_ONLY": "false"}
        times: dict[str, list[float]] = {"server": [], "text tower": [], "both towers": []}
        loads = os.getloadavg()[0]
        server, url = _start_server(env)
        try:
            imports, heavy = _import_seconds(env)
            for run in range(args.runs):
                log(f"run {run + 1}/{args.runs}")
                times["server"].append(_timed_search(env))
                # The local ways must not find the server: hide its file for them.
                hidden = Path(tmp) / "home" / "server.json"
                hidden.rename(hidden.with_suffix(".hidden"))
                try:
                    times["text tower"].append(_timed_search(env))
                    times["both towers"].append(_timed_search(both))
                finally:
                    hidden.with_suffix(".hidden").rename(hidden)
        finally:
            server.terminate()
            server.wait(timeout=60)
        loads = (loads + os.getloadavg()[0]) / 2

    base = statistics.median(times["both towers"])
    rows = [
        (way, statistics.median(t), min(t), base / statistics.median(t)) for way, t in times.items()
    ]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    payload = {
        "model": args.model if args.model == "demo" else "ViT-B-32 (random weights)",
        "photos": args.photos,
        "runs": args.runs,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg": round(loads, 2),
        "seconds": {way: t for way, t in times.items()},
        "median_seconds": {way: round(statistics.median(t), 3) for way, t in times.items()},
        "speedup_vs_both_towers": {r[0]: round(r[3], 2) for r in rows},
        "server_path_import_seconds": round(imports, 3),
        "server_path_imports_torch": heavy,
        "server_url": url,
        "load_and_embed_one_text_seconds": loads_in_process,
    }
    if args.json:
        dump_json(payload)
        return
    print_table(
        f"pixsearch search, fresh process each ({payload['model']}, {args.photos} photos; "
        f"{cpu}, {os.cpu_count()} cores, load {loads:.1f})",
        ["way", "median s", "best s", "x faster than both towers"],
        rows,
    )
    print(f"\nserver path: {imports:.2f} s of imports, torch/open_clip/faiss imported: {heavy}")
    _report_loads(loads_in_process, args.model)


def _report_loads(loads: dict[str, list[float]], model: str) -> None:
    base = statistics.median(loads["both towers"])
    print_table(
        f"load the model and embed one text, after the imports ({model}; load "
        f"{os.getloadavg()[0]:.1f})",
        ["way", "median s", "best s", "x faster than both towers"],
        [(w, statistics.median(t), min(t), base / statistics.median(t)) for w, t in loads.items()],
    )


if __name__ == "__main__":
    main()
