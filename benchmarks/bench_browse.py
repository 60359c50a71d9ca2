"""Browsing cost on a large collection: a page of `GET /images`, the month counts, `/facets`.

A temporary SQLite home gets `--rows` image rows (no files: browsing reads only the
database) spread over ten years, a tenth without a capture date (dated by file time), six
cameras, three formats. Then, through pixsearch's own `indexer.browse`, the median of
`--repeat` calls of:

- a page of 60 newest first at offset 0, in the middle and at the end (no filter);
- the same first page with a camera filter, and with a date filter (which also counts the
  undated photos it left out);
- the photos per month (what the first page adds for the month jumper);
- `facets` (cameras, formats, sizes, date range, months).

Each browse walks the index on the photo's stored date (`images.shown_at`: capture time,
else the file's local time); filters other than dates are checked row by row along it.

    uv run python benchmarks/bench_browse.py --rows 100000
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _fill(home: object, rows: int) -> None:
    from sqlalchemy import insert

    from indexer.db import Image, shown_date

    rng = np.random.default_rng(0)
    cameras = [("Apple", "iPhone 13"), ("Canon", "Canon EOS R6"), ("SONY", "ILCE-7M3")]
    cameras += [("Google", "Pixel 7"), ("FUJIFILM", "X-T4"), (None, None)]
    start = datetime(2015, 1, 1)
    batch = []
    now = datetime.now()
    for i in range(rows):
        moment = start + timedelta(seconds=int(rng.integers(0, 10 * 365 * 86400)))
        make, model = cameras[int(rng.integers(len(cameras)))]
        taken = None if rng.random() < 0.1 else moment
        mtime_ns = int(moment.timestamp() * 1e9)
        batch.append(
            {
                "path": f"/photos/{moment.year}/{i:07d}.jpg",
                "size": 1_000_000,
                "mtime_ns": mtime_ns,
                "content_hash": f"{i:032x}",
                "width": 4000,
                "height": 3000,
                "format": ("jpeg", "png", "webp")[i % 3],
                "taken_at": taken,
                # a Core insert: what the ORM's before_insert hook sets on indexing
                "shown_at": shown_date(taken, mtime_ns),
                "camera_make": make,
                "camera_model": model,
                "gps_lat": None,
                "gps_lon": None,
                "indexed_at": now,
            }
        )
        if len(batch) == 10_000:
            with home.engine.begin() as conn:  # type: ignore[attr-defined]
                conn.execute(insert(Image), batch)
            batch = []
    if batch:
        with home.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(insert(Image), batch)


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm the page cache and SQLAlchemy's statement cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    from indexer import browse
    from indexer.filters import Filters
    from indexer.home import Home
    from indexer.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Settings(home=Path(tmp) / "home", database_url=None))
        home.image_count()  # creates and migrates the database
        t = time.perf_counter()
        _fill(home, args.rows)
        log.info("filled %d rows in %.1f s", args.rows, time.perf_counter() - t)
        mid, end = args.rows // 2, max(0, args.rows - 60)
        cases: list[tuple[str, Callable[[], object]]] = [
            ("page 1, newest first", lambda: browse.browse(home, k=60)),
            ("page in the middle", lambda: browse.browse(home, offset=mid, k=60)),
            ("last page", lambda: browse.browse(home, offset=end, k=60)),
            ("page 1, camera filter", lambda: browse.browse(home, Filters(camera="canon"))),
            (
                "page 1, date filter",
                lambda: browse.browse(home, Filters(taken_after=date(2020, 1, 1))),
            ),
            ("photos per month", lambda: browse.month_counts(home)),
            ("facets", lambda: browse.facets(home)),
        ]
        print(f"{args.rows:,} photos, SQLite; CPU: {platform.processor() or platform.machine()}")
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        for name, fn in cases:
            print(f"{name:28s} {_median_ms(fn, args.repeat):8.1f} ms")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
