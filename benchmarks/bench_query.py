"""Query latency, memory and index recall at 10k, 100k and 1M images.

For each size it writes a synthetic home straight into SQLite (`synthetic_home.py`): image
rows with realistic metadata and one 512-d unit embedding each. The embeddings are clustered
the way CLIP photo embeddings are (uniform random 512-d vectors would make every approximate
index look terrible): a shared mean direction (random photos have cosine ~0.45), 30 broad
themes, topics inside them of Zipf-distributed sizes, bursts of near-duplicates (cosine ~0.9),
and noise with a decaying spectrum (a low intrinsic dimension). The FAISS index is then derived
by `Home.load_index`, as pixsearch does for a home whose index is missing (timed: "build").

Then a fresh process (as a server would be) loads the model (automatic precision) and a
`search.engine.Searcher`, and runs distinct text queries end to end through
`Searcher.search(Query(text=..., k=20))`: text encoding, vector search, exact re-scoring
from the stored embeddings, duplicate collapse, metadata rows; no captions. It waits for the
searcher's read-ahead, runs `--passes` passes of distinct texts (default 2) and reports the last
pass's p50 and p99 latency (a server's steady state; the first pass's beside it) and its
resident memory (RSS) with the model and index loaded.
The random text tower's texts are the flattest queries there are (below); a trained model's
text naming a subject lies close to a topic. So it also times `--topic-queries` (default 100)
queries that encode a real text, as a text query does, then search a synthetic text-like
vector in its place (`Query(image_vector=...)`): "topic p50".

recall@10 is the index's: its `candidates(10)` hits re-scored exactly (what the searcher
does), against exact search over all vectors, on 200 synthetic text-like queries (a topic's
direction plus noise) and, as "recall@10 text", on the text encoder's own query vectors
searched the way the searcher searches text (each text its own IVF lists and, when those are
many, more candidates: `indexer.probing`).
With random weights those vectors are unrelated to the synthetic photos (best cosine ~0.12):
a worst case of the modality gap, harder than a trained model's texts.

    uv run python benchmarks/bench_query.py                       # 10k, 100k, 1M: table
    uv run python benchmarks/bench_query.py --sizes 10000 --json
    uv run python benchmarks/bench_query.py --keep /tmp/homes     # reuse homes between runs

Figures on a shared machine are noisy; the 1M run takes a few minutes (most of it writing
2 GB of embeddings into SQLite and building the index).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import common
import numpy as np
from synthetic_home import DIM, Collection, write_home

#: Collections larger than this are generated and written block by block, never whole.
STREAM_ABOVE = 2_000_000
HEADER = [
    "images", "index", "nprobe", "p50 ms", "p99 ms", "RSS GiB", "recall@10", "recall@10 text",
    "build s", "vecfile s", "filtered p50", "camera p50", "topic p50", "B/image",
]  # fmt: skip
WORDS_A = [
    "a dog", "two cats", "a red car", "children", "an old man", "a bride", "a horse",
    "a sailboat", "a bicycle", "a birthday cake", "a mountain", "a lighthouse", "a train",
    "fireworks", "a snowman", "a violin", "tulips", "a surfer", "a tent", "a pizza",
]  # fmt: skip
WORDS_B = [
    "on a beach", "in the snow", "at sunset", "in a forest", "in the city at night",
    "in the rain", "on a lake", "in a kitchen", "at a wedding", "in the desert",
]  # fmt: skip


# -- the measuring child ----------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: load model and searcher, time queries, report RSS."""
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from indexer.settings import Settings
    from search.engine import Searcher

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    rss_start = common.rss_bytes()
    settings = Settings(
        home=Path(args.home), model=args.model, pretrained=str(args.checkpoint), device="cpu"
    )
    encoder = get_encoder(settings).load()
    searcher = Searcher(Home(settings), encoder)
    texts = _texts(args.queries + 3)
    query_cls = _query_class()
    started = time.perf_counter()
    _search(searcher, query_cls, "warm up the model and load the index")
    first = time.perf_counter() - started
    # The searcher reads the vector file and then the image rows into the page cache in the
    # background when they fit in half the memory (`vecstore.read_ahead`); queries are timed
    # once that is done, as on a server that has been up for a minute.
    started = time.perf_counter()
    for thread in threading.enumerate():
        if thread.name == "pixsearch-prefetch":
            thread.join()
    prefetch = time.perf_counter() - started
    for t in texts[:3]:  # warm-up queries, not timed
        _search(searcher, query_cls, t)
    # Each pass asks other texts (", pass N"); the reported latencies are the last pass's: a
    # server's steady state, once the pages its queries touch are in memory (at 10M on a slow
    # disk the first pass is slower: `first_pass_*`).
    first_pass: list[float] = []
    for n in range(max(1, args.passes)):
        times = []
        hits = []
        cpu0 = time.process_time()
        for t in texts[3:]:
            t0 = time.perf_counter()
            result = _search(searcher, query_cls, t + (f", pass {n}" if n else ""))
            times.append(time.perf_counter() - t0)
            hits.append(len(result))
        cpu_per_query = (time.process_time() - cpu0) / max(1, len(times))
        first_pass = first_pass or times
    filtered = _filtered_queries(searcher, texts[3:], args.filtered)
    index = searcher.index()
    topic = _topic_queries(searcher, encoder, texts[3:], len(index), args)
    # Recall over as many texts as image-like queries: with 60 the figure moved by 0.02
    # between two builds of the same 10M home.
    qvecs = np.stack([encoder.embed_texts([t])[0] for t in _texts(args.recall_queries + 3)[3:]])
    out = {
        "latency_ms": [1000 * t for t in times],
        "p50_ms": 1000 * float(np.percentile(times, 50)),
        "p99_ms": 1000 * float(np.percentile(times, 99)),
        "first_pass_p50_ms": 1000 * float(np.percentile(first_pass, 50)),
        "first_pass_p99_ms": 1000 * float(np.percentile(first_pass, 99)),
        "passes": max(1, args.passes),
        "mean_hits": float(np.mean(hits)),
        "cpu_ms_per_query": 1000 * cpu_per_query,
        "first_query_s": first,
        "prefetch_s": prefetch,
        "rss_bytes": common.rss_bytes(),
        **_rss_parts(),
        "rss_by_file": _rss_by_file(),
        "peak_rss_bytes": common.peak_rss_bytes(),
        "rss_before_model_bytes": rss_start,
        "index_kind": index.kind,
        "index_nprobe": index.nprobe,
        "precision": encoder.precision,
        "torch_threads": __import__("torch").get_num_threads(),
        "text_vectors": qvecs.tolist(),
        **filtered,
        **topic,
    }
    json.dump(out, sys.stdout)


def _texts(count: int) -> list[str]:
    """Distinct texts: the searcher caches text embeddings and rankings of repeated queries."""
    base = [f"{a} {b}" for b in WORDS_B for a in WORDS_A]
    return [
        base[i % len(base)] + (f", take {i // len(base)}" if i >= len(base) else "")
        for i in range(count)
    ]


def _topic_queries(
    searcher: Any, encoder: Any, texts: list[str], n: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Queries close to a topic, as a trained model's text naming a subject is (the random
    tower's texts are the flattest queries there are): each encodes a real text, as a text
    query does, then searches in its place a synthetic text-like vector (a topic plus noise,
    `Collection.queries`, the recall@10 queries' kind)."""
    from search.query import Query

    if not args.topic_queries:
        return {}
    vecs = Collection(n, seed=args.seed).queries(args.topic_queries + 3, seed=23)
    times, encode, hits = [], [], []
    for i, v in enumerate(vecs):
        t0 = time.perf_counter()
        encoder.embed_texts([f"{texts[i % len(texts)]}, topic {i}"])
        t1 = time.perf_counter()
        found = searcher.search(Query(image_vector=v, k=20, captions=False)).hits
        if i >= 3:  # warm-up queries, not timed
            times.append(time.perf_counter() - t0)
            encode.append(t1 - t0)
            hits.append(len(found))
    return {
        "topic_p50_ms": 1000 * float(np.percentile(times, 50)),
        "topic_p99_ms": 1000 * float(np.percentile(times, 99)),
        "topic_encode_p50_ms": 1000 * float(np.percentile(encode, 50)),
        "topic_mean_hits": float(np.mean(hits)),
    }


def _rss_parts() -> dict[str, int]:
    """Resident memory by kind: anonymous (the process's own) and file-backed (pages of
    memory-mapped files it touched: page cache the kernel may drop at any time)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            for field in ("RssAnon", "RssFile"):
                if line.startswith(field + ":"):
                    out[f"{field.lower()}_bytes"] = int(line.split()[1]) * 1024
    return out


def _rss_by_file() -> dict[str, int]:
    """Resident bytes of each memory-mapped file holding more than 10 MB of them."""
    out: dict[str, int] = {}
    name = ""
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:
                name = Path(head[5]).name if len(head) > 5 and head[5].startswith("/") else ""
            elif head and head[0] == "Rss:" and name:
                out[name] = out.get(name, 0) + int(head[1]) * 1024
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 10_000_000}


def _filtered_queries(searcher: Any, texts: list[str], count: int) -> dict[str, Any]:
    """Text queries restricted to one week of capture dates (a selective filter: 1/600 of
    the collection), each a different week; and to one camera make (3/10 of it)."""
    from datetime import date

    from search.query import Filters, Query

    if not count:
        return {}
    rng = np.random.default_rng(5)
    times, hits = [], []
    for i in range(count):
        start = date(2012, 1, 1) + timedelta(days=int(rng.integers(0, 12 * 365 - 7)))
        window = Filters(taken_after=start, taken_before=start + timedelta(days=6))
        q = Query(text=f"{texts[i % len(texts)]}, week {i}", k=20, captions=False, filters=window)
        t0 = time.perf_counter()
        hits.append(len(searcher.search(q).hits))
        times.append(time.perf_counter() - t0)
    # A broad filter: one camera make of three photos in ten (the synthetic home's Canon).
    broad, broad_hits = [], []
    for i in range(count):
        q = Query(
            text=f"{texts[i % len(texts)]}, canon {i}",
            k=20,
            captions=False,
            filters=Filters(camera="canon"),
        )
        t0 = time.perf_counter()
        broad_hits.append(len(searcher.search(q).hits))
        broad.append(time.perf_counter() - t0)
    return {
        "filtered_p50_ms": 1000 * float(np.percentile(times[1:] or times, 50)),
        "filtered_p99_ms": 1000 * float(np.percentile(times[1:] or times, 99)),
        "filtered_mean_hits": float(np.mean(hits)),
        "broad_filter_p50_ms": 1000 * float(np.percentile(broad[1:] or broad, 50)),
        "broad_filter_mean_hits": float(np.mean(broad_hits)),
    }


def _query_class() -> Any:
    try:
        from search.query import Query

        return Query
    except ImportError:  # the older Searcher: text(query, k)
        return None


def _search(searcher: Any, query_cls: Any, text: str) -> list[Any]:
    if query_cls is not None:
        return list(searcher.search(query_cls(text=text, k=20, captions=False)).hits)
    return list(searcher.text(text, 20))


# -- the driver -------------------------------------------------------------------------------
def store_recall(
    index: Any, store: Any, ids: np.ndarray, qs: np.ndarray, k: int = 10, unlike: bool = False
) -> float:
    """`index_recall` for a collection that is not in memory: exact search over the vector
    file's rows in blocks, candidates re-scored from it."""
    from indexer.ondisk_build import _exact_by_blocks
    from indexer.vecstore import StoreRows
    from indexer.vectors import rescore

    truth = ids[_exact_by_blocks(StoreRows(store, ids), qs, k)]
    hits = 0
    for qi in range(len(qs)):
        found, vecs = store.get(_candidates(index, qs[qi], k, unlike))
        _, top = rescore(qs[qi], found, vecs, k)
        hits += len(set(top.tolist()) & set(truth[qi].tolist()))
    return hits / (k * len(qs))


def _candidates(index: Any, q: np.ndarray, k: int, unlike: bool) -> np.ndarray:
    """The candidates the searcher re-scores for one query."""
    row = q[None].astype(np.float32)
    _, cand = index.search(row, index.candidates(k, row, unlike=unlike), unlike=unlike)
    return cand[0][cand[0] >= 0]


def disk_bytes(folder: Path) -> int:
    """Bytes of every file under a folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def index_recall(
    index: Any, vecs: np.ndarray, ids: np.ndarray, qs: np.ndarray, k: int = 10, unlike: bool = False
) -> float:
    """recall@k of the index + exact re-scoring of its candidates, vs exact search
    (`unlike`: searched as the searcher searches text queries)."""
    from indexer.vectors import exact_search, rescore

    _, truth = exact_search(vecs, qs, k)
    hits = 0
    for qi in range(len(qs)):
        c = _candidates(index, qs[qi], k, unlike)
        _, top = rescore(qs[qi], c, vecs[c - ids[0]], k)  # ids are consecutive
        hits += len(set(top.tolist()) & set(ids[truth[qi]].tolist()))
    return hits / (k * len(qs))


def run_size(n: int, args: argparse.Namespace, checkpoint: Path, root: Path) -> dict[str, Any]:
    from indexer.encoder import model_key
    from indexer.home import Home
    from indexer.settings import Settings
    from indexer.vectors import VectorIndex

    key = model_key(args.model, str(checkpoint))
    home_dir = root / f"home-{n}"
    t0 = time.perf_counter()
    coll = Collection(n, seed=args.seed)
    streamed = n > STREAM_ABOVE
    vecs = None if streamed else coll.vectors()
    gen_s = time.perf_counter() - t0
    write_s = 0.0
    written = home_dir / "written"
    if not written.exists():
        common.log(f"{n}: writing the synthetic home")
        shutil.rmtree(home_dir, ignore_errors=True)  # a write that was cut short
        home_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_home(home_dir, key, coll.chunks() if vecs is None else vecs, args.seed, n=n)
        write_s = time.perf_counter() - t0
        written.write_text(f"{write_s:.1f}\n")
    if args.write_only:
        return {"images": n, "write_home_s": write_s}
    home = Home(Settings(home=home_dir, model=args.model, pretrained=str(checkpoint)))
    model = home.model_row(key)
    assert model is not None
    index_file = home.index_path(key)
    if args.rebuild:
        index_file.unlink(missing_ok=True)
    if args.rebuild:
        home.vectors_path(key).unlink(missing_ok=True)
    common.log(f"{n}: the vector file")
    t0 = time.perf_counter()
    store = home.vector_store(key, model.id, model.dim)
    vector_file_s = time.perf_counter() - t0
    common.log(f"{n}: building the index")
    t0 = time.perf_counter()
    index = home.load_index(key, model.id, model.dim)
    index.wait_rebuild()
    build_s = time.perf_counter() - t0
    bytes_per_image = disk_bytes(home_dir) / n
    kind = index.kind
    ids = np.arange(1, n + 1, dtype=np.int64)

    common.log(f"{n}: querying in a fresh process")
    env = {**os.environ, "PIXSEARCH_HOME": str(home_dir)}
    cmd = [
        sys.executable, __file__, "--child", "--home", str(home_dir), "--checkpoint",
        str(checkpoint), "--model", args.model, "--queries", str(args.queries),
        "--torch-threads", str(args.torch_threads), "--filtered", str(args.filtered),
        "--passes", str(args.passes), "--topic-queries", str(args.topic_queries),
        "--seed", str(args.seed), "--recall-queries", str(args.recall_queries),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"query process failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout)
    text_q = np.asarray(res.pop("text_vectors"), np.float32)
    common.log(f"{n}: recall against exact search")
    if vecs is not None:
        synthetic = index_recall(index, vecs, ids, coll.queries(args.recall_queries))
        text_recall = index_recall(index, vecs, ids, text_q, unlike=True)
    else:
        synthetic = store_recall(index, store, ids, coll.queries(args.recall_queries))
        text_recall = store_recall(index, store, ids, text_q, unlike=True)
    opened, _ = VectorIndex.open(index_file, DIM, home.generation(model.id), n)
    return {
        "images": n,
        "index_kind": kind,
        "nprobe": index.nprobe,
        "candidates_for_10": index.candidates(10),
        "index_file_bytes": index_file.stat().st_size,
        "reopened_ok": opened is not None,
        "generate_s": gen_s,
        "write_home_s": write_s,
        "vector_file_s": vector_file_s,
        "build_index_s": build_s,
        "disk_bytes_per_image": bytes_per_image,
        "recall_at_10": synthetic,
        "recall_at_10_text_vectors": text_recall,
        **{k: v for k, v in res.items() if k != "latency_ms"},
        "latency_ms": res["latency_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per size")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--checkpoint", type=Path, help="default: random weights, cached")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the synthetic homes here")
    parser.add_argument("--rebuild", action="store_true", help="rebuild reused indexes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads of the query process"
    )
    parser.add_argument(
        "--passes", type=int, default=2, help="passes of distinct texts; the last one is timed"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--filtered", type=int, default=50, help="timed one-week-filtered queries per size"
    )
    parser.add_argument(
        "--topic-queries", type=int, default=100, help="timed topic-like queries per size"
    )
    parser.add_argument(
        "--write-only", action="store_true", help="only write the synthetic homes (with --keep)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    checkpoint = args.checkpoint or common.random_checkpoint(args.model)
    root = args.keep or Path(tempfile.mkdtemp(prefix="pixsearch-bench-query-"))
    root.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in (int(s) for s in args.sizes.split(",") if s.strip()):
            results.append(run_size(n, args, checkpoint, root))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json or args.write_only:
        common.dump_json({"benchmark": "query", "machine": common.machine(), "results": results})
        return
    m = common.machine()
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, faiss {m['faiss']} "
        f"{m['faiss_simd']}, load average {m['loadavg']:.1f}; model {args.model} "
        f"({results[0]['precision'] if results else '?'}), {args.queries} text queries, k=20"
    )
    rows = [
        [
            r["images"],
            r["index_kind"],
            r["nprobe"] or "-",
            r["p50_ms"],
            r["p99_ms"],
            f"{r['rss_bytes'] / 2**30:.2f}",
            f"{r['recall_at_10']:.3f}",
            f"{r['recall_at_10_text_vectors']:.3f}",
            r["build_index_s"],
            r["vector_file_s"],
            r.get("filtered_p50_ms", "-"),
            r.get("broad_filter_p50_ms", "-"),
            r.get("topic_p50_ms", "-"),
            int(r["disk_bytes_per_image"]),
        ]
        for r in results
    ]
    common.print_table(
        "Text query end to end (encode, search, re-score, rerank, metadata; no captions)",
        HEADER,
        rows,
    )


if __name__ == "__main__":
    main()
