"""Memory the server takes for decompression-bomb uploads (never a timed test).

Builds a home of 12 photos with the test suite's tiny open_clip model, starts the app in this
process (httpx's in-process client), and uploads all-black 1-bit PNGs of a few tens of KB
(15,800² and 7,000² pixels), one at a time and three at once. For each it prints the status
codes, the peak growth of this process's resident memory during the requests (sampled every
2 ms) and the growth left once they are done.

    uv run python benchmarks/bomb_memory.py [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import dump_json, log, machine, print_table, rss_bytes

CASES = ((15_800, 1), (7_000, 1), (7_000, 3), (15_800, 3))


def _home(folder: Path) -> None:
    import os

    import open_clip
    import torch

    from api.cli import main
    from tests.conftest import TINY_CONFIG
    from tests.helpers import make_photos

    config = folder / "pixsearch-bench-tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(config.stem, pretrained=None)
    torch.save(model.state_dict(), folder / "tiny.pt")
    os.environ.update(
        PIXSEARCH_HOME=str(folder / "home"),
        PIXSEARCH_MODEL=str(config),
        PIXSEARCH_PRETRAINED=str(folder / "tiny.pt"),
        PIXSEARCH_CAPTIONER="none",
    )
    make_photos(folder / "photos", 12)
    try:
        main(["index", str(folder / "photos")])
    except SystemExit as exc:
        if exc.code:
            raise


def _measure(client: Any, data: bytes, clients: int) -> tuple[list[int], int, int]:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # start from what the process really holds
    base = rss_bytes()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes() - base)
            stop.wait(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    files = {"file": ("bomb.png", data, "image/png")}
    with ThreadPoolExecutor(clients) as pool:
        codes = list(
            pool.map(
                lambda _: client.post("/search/image", files=files).status_code, range(clients)
            )
        )
    stop.set()
    sampler.join()
    gc.collect()
    return codes, peak[0], rss_bytes() - base


def main(argv: list[str] | None = None) -> int:
    """Run the cases; a table, or JSON with --json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    from fastapi.testclient import TestClient

    from api.server import create_app
    from tests.helpers import bomb_png

    rows = []
    with tempfile.TemporaryDirectory(prefix="pixsearch-bomb-") as tmp:
        _home(Path(tmp))
        with TestClient(create_app()) as client:
            for side, clients in CASES:
                log(f"{side}x{side} x{clients}")
                codes, peak, left = _measure(client, bomb_png(side, side), clients)
                rows.append([f"{side}x{side}", clients, codes, peak >> 20, left >> 20])
    header = ["1-bit PNG", "at once", "status", "peak MB", "left MB"]
    if args.json:
        dump_json({"machine": machine(), "rows": [dict(zip(header, r, strict=True)) for r in rows]})
    else:
        print_table("decompression-bomb uploads: this process's memory growth", header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
