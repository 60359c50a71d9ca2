"""The same photos indexed and searched with SQLite and with PostgreSQL: what the server costs.

The first ``--count`` photos of ``--photos`` (default: 300 of the ImageNet samples in
/work/shared/photos/imagenet-1k, read where they are, symlinked) are indexed into a new home
per database with the tests' tiny CLIP (tests/assets), so that the store's share of the time
shows instead of the model's. PostgreSQL is a local server started for the run from Debian's
binaries (tests/pg.py: 127.0.0.1, `fsync=off`, as in the tests, so its commits are cheaper
than a production server's). For each database, through pixsearch's own code:

- ``index``: a first ``Indexer.run`` over the folder (images/s);
- ``re-run``: the same run again with nothing changed (the scan, the plan and the lookups);
- ``search``: median and p90 of ``Searcher.search`` over 40 text queries (their text vectors
  cached first), as the server answers them, and the same with a folder and date filter.

Both runs happen in one command, one after the other, so the ratio is the figure to read;
the machine and its load average are printed with it.

    uv run python benchmarks/bench_postgres.py [--count 300] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from common import dump_json, log, machine, print_table

PHOTOS = Path("/work/shared/photos/imagenet-1k")
QUERIES = [f"a photo of {w}" for w in ("a dog", "a car", "food", "a bird", "the sea")] * 8


def run(kind: str, url: str | None, photos: list[Path], work: Path) -> dict[str, Any]:
    """Index and search `photos` into a new home on the database `url` (None: SQLite)."""
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from indexer.pipeline import Indexer
    from indexer.settings import Settings
    from search.engine import Searcher
    from search.query import Filters, Query
    from tests.assets.tiny_models import materialize_tiny_clip

    folder = work / "photos"
    if not folder.exists():
        folder.mkdir()
        for p in photos:
            (folder / p.name).symlink_to(p)
    json_path, ckpt = materialize_tiny_clip(work / "clip")
    settings = Settings(
        home=work / f"home-{kind}",
        database_url=url,
        model=str(json_path),
        pretrained=str(ckpt),
        device="cpu",
        captioner="none",
    )
    home = Home(settings)
    encoder = get_encoder(settings)
    encoder.load()
    t0 = time.perf_counter()
    report = Indexer(home, encoder).run([folder])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = Indexer(home, encoder).run([folder])
    rerun = time.perf_counter() - t0
    assert again.unchanged == report.added, (again, report)
    searcher = Searcher(home, encoder)
    searcher.prime_texts(QUERIES)
    window = Filters(path_prefix=str(folder), taken_after=date(1990, 1, 1))
    out: dict[str, Any] = {
        "database": kind,
        "images": report.added,
        "failed": len(report.failed),
        "index_s": first,
        "index_images_per_s": report.added / first,
        "rerun_s": rerun,
    }
    for label, filters in (("search", Filters()), ("filtered", window)):
        times = []
        for text in QUERIES:
            t0 = time.perf_counter()
            searcher.search(Query(text=text, k=20, filters=filters))
            times.append((time.perf_counter() - t0) * 1000)
        times = times[5:]  # the first calls load the index and the background sample
        out[f"{label}_ms_median"] = statistics.median(times)
        out[f"{label}_ms_p90"] = sorted(times)[int(0.9 * len(times))]
    return out


def main() -> None:
    """Run both databases and print a table (or --json)."""
    from tests.pg import PgServer, find_bin

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    photos = photos[: args.count]
    bindir = find_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    server = PgServer(bindir).start()
    try:
        with tempfile.TemporaryDirectory(prefix="pixsearch-bench-pg-") as tmp:
            work = Path(tmp)
            rows = []
            for kind, url in (("sqlite", None), ("postgresql", server.database())):
                log(f"{kind}: indexing {len(photos)} photos")
                rows.append(run(kind, url, photos, work))
    finally:
        server.stop()
    payload = {"machine": machine(), "results": rows}
    if args.json:
        dump_json(payload)
        return
    m = payload["machine"]
    keys = list(rows[0])[1:]
    table = [
        [k, *(r[k] for r in rows), rows[1][k] / rows[0][k] if rows[0][k] else "-"] for k in keys
    ]
    print_table(
        f"SQLite vs PostgreSQL, {len(photos)} photos, tiny CLIP - {m['cpu']}, "
        f"{m['cores']} cores, load average {m['loadavg']:.1f}",
        ["", "sqlite", "postgresql", "pg/sqlite"],
        table,
    )


if __name__ == "__main__":
    main()
