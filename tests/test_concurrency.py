"""Concurrent use: a running server answers every query while an indexing run writes to the
same home, sees the new photos as they are committed, and never reads a half-written index."""

from __future__ import annotations

import io
import json
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from api.server import create_app
from indexer.home import Home
from indexer.settings import Settings
from indexer.vectors import VectorIndex
from tests.helpers import make_photos, run_cli, start_index

FIRST = 8
MORE = 56
TOTAL = FIRST + MORE
#: Only a safety net against a hung child: no assertion depends on how long anything takes.
HUNG = 240.0
ALL = {"text": "x", "k": 200, "cutoff": False, "rerank": False}


@contextmanager
def serving(app: object) -> Iterator[str]:
    """Run the app under uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def _committed(db_file: Path) -> dict[int, str]:
    """id -> path of every image committed with its embedding, read straight from SQLite."""
    with sqlite3.connect(f"file:{db_file}?mode=rw", uri=True, timeout=60) as conn:
        rows = conn.execute(
            "SELECT images.id, images.path FROM images JOIN embeddings "
            "ON embeddings.content_hash = images.content_hash"
        )
        return dict(rows.fetchall())


def _wait(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HUNG
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)


@dataclass
class Log:
    """What one client thread saw, in order."""

    errors: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # size of the "everything" answer
    ready: list[int] = field(default_factory=list)  # /ready's image count
    seen: dict[int, str] = field(default_factory=dict)  # id -> path of every hit
    requests: int = 0


def _client(base: str, folder: Path, stop: threading.Event, log: Log) -> None:
    """One user: the everything-query, a text query, a filtered one, more-like-this, /ready."""
    with httpx.Client(base_url=base, timeout=HUNG) as http:

        def call(method: str, url: str, **kw: object) -> dict | None:
            log.requests += 1
            try:
                res = http.request(method, url, **kw)  # type: ignore[arg-type]
            except httpx.HTTPError as exc:
                log.errors.append(f"{method} {url}: {type(exc).__name__}: {exc}")
                return None
            if res.status_code != 200:
                log.errors.append(f"{method} {url}: {res.status_code} {res.text[:200]}")
                return None
            body = res.json()
            for hit in body.get("results", ()):
                if log.seen.setdefault(hit["id"], hit["path"]) != hit["path"]:
                    log.errors.append(f"id {hit['id']} changed path to {hit['path']}")
            return body

        while not stop.is_set():
            body = call("POST", "/search", json=ALL)
            if body is not None:
                log.counts.append(len(body["results"]))
                if len({h["id"] for h in body["results"]}) != len(body["results"]):
                    log.errors.append("an id came back twice")
            call("POST", "/search", json={"text": "a red circle", "k": 10})
            call(
                "POST",
                "/search",
                json={"text": "a blue square", "k": 30, "filters": {"path_prefix": str(folder)}},
            )
            if body and body["results"]:
                some = body["results"][len(log.counts) % len(body["results"])]["id"]
                similar = call("GET", f"/images/{some}/similar", params={"k": 5})
                if similar is not None and similar["results"][0]["id"] != some:
                    log.errors.append(f"image {some} is not first among its own similar ones")
            info = call("GET", "/ready")
            if info is not None:
                log.ready.append(info["images"])
            time.sleep(0.01)


def _watch_index(path: Path, db_file: Path, dim: int, stop: threading.Event, bad: list) -> None:
    """Open the saved index over and over: old or new, it must always be a whole file."""
    while not stop.is_set():
        with sqlite3.connect(f"file:{db_file}?mode=rw", uri=True, timeout=60) as conn:
            generation = conn.execute("SELECT max(generation) FROM models").fetchone()[0]
            count = conn.execute(
                "SELECT count(*) FROM images JOIN embeddings "
                "ON embeddings.content_hash = images.content_hash"
            ).fetchone()[0]
        _, why = VectorIndex.open(path, dim, generation, count)
        # ok, or a whole file from an earlier generation; never a torn or missing one.
        if not why.startswith(("ok", "stale", "holds")):
            bad.append(why)
        time.sleep(0.005)


def _fresh_ranking(text: str) -> list[int]:
    """The ranking a brand-new searcher (a fresh process's view) gives for a text."""
    from indexer.encoder import get_encoder
    from search.engine import Searcher
    from search.query import Query

    settings = Settings()
    searcher = Searcher(Home(settings), get_encoder(settings))
    return [h.id for h in searcher.search(Query(text=text, k=200, cutoff=False)).hits]


def _check_frozen_state(http: httpx.Client, db_file: Path, folder: Path) -> int:
    """With the writer stopped, the API must answer exactly what the database holds."""
    truth = _committed(db_file)
    everything = http.post("/search", json=ALL).json()["results"]
    assert {h["id"]: h["path"] for h in everything} == truth
    ranked = http.post("/search", json={"text": "x", "k": 200, "cutoff": False}).json()
    assert {h["id"] for h in ranked["results"]} == set(truth)
    filtered = http.post(
        "/search", json={**ALL, "filters": {"path_prefix": str(folder), "min_width": 100}}
    ).json()
    assert {h["id"] for h in filtered["results"]} == set(truth)
    assert http.get("/ready").json()["images"] == len(truth)
    newest = max(truth)
    similar = http.get(f"/images/{newest}/similar", params={"k": 3}).json()["results"]
    assert similar[0]["id"] == newest
    # The server's ranking is the one a fresh process computes from the same data.
    text = "a green triangle"
    served = http.post("/search", json={"text": text, "k": 200, "cutoff": False}).json()
    assert [h["id"] for h in served["results"]] == _fresh_ranking(text)
    return len(truth)


def test_searching_while_an_indexing_run_writes(
    env: dict[str, str], tmp_path: Path, capsys, caplog
) -> None:
    folder = tmp_path / "photos"
    make_photos(folder, FIRST, size=(320, 240))
    assert run_cli(capsys, "index", str(folder)).code == 0
    make_photos(folder, MORE, start=FIRST, size=(320, 240))
    home = Home(Settings())
    db_file = home.path / "pixsearch.db"
    model = home.model_row(next(iter(_model_names(home))))
    assert model is not None
    index_file = home.index_path(model.name)

    stop = threading.Event()
    logs = [Log() for _ in range(4)]
    torn: list[str] = []
    frozen_at: list[int] = []
    with serving(create_app()) as base, httpx.Client(base_url=base, timeout=HUNG) as http:
        threads = [
            threading.Thread(target=_client, args=(base, folder, stop, log), daemon=True)
            for log in logs
        ]
        threads.append(
            threading.Thread(
                target=_watch_index,
                args=(index_file, db_file, model.dim, stop, torn),
                daemon=True,
            )
        )
        for t in threads:
            t.start()
        proc = start_index(folder, env)
        try:
            # Freeze the writer at three points (it may be inside a transaction) and check
            # that what the server answers is exactly what is committed.
            for target in (FIRST + 1, FIRST + MORE // 2, TOTAL - 4):
                _wait(proc, lambda t=target: len(_committed(db_file)) >= t)
                running = proc.poll() is None
                if running:
                    proc.send_signal(signal.SIGSTOP)
                try:
                    frozen_at.append(_check_frozen_state(http, db_file, folder))
                finally:
                    if running:
                        proc.send_signal(signal.SIGCONT)
            out, err = proc.communicate(timeout=HUNG)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
            stop.set()
            for t in threads:
                t.join(HUNG)
        assert proc.returncode == 0, err
        assert json.loads(out)["added"] == MORE

        # After the run, the server picks up the final index by itself.
        assert _check_frozen_state(http, db_file, folder) == TOTAL
    seen = (
        f"{sum(log.requests for log in logs)} requests; the everything-query answered "
        f"{sorted({c for log in logs for c in log.counts})} images; writer frozen at {frozen_at}"
    )
    errors = [e for log in logs for e in log.errors]
    assert errors == [], seen
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], seen
    assert torn == [], seen
    final = _committed(db_file)
    for log in logs:
        assert log.counts, "a client got no answer at all"
        # Photos only ever appear: each client sees the collection grow, never shrink.
        assert log.counts == sorted(log.counts), (log.counts, seen)
        assert log.ready == sorted(log.ready), (log.ready, seen)
        assert log.counts[0] >= FIRST
        # Every id any client was shown is a real photo, at the path it was shown with.
        assert {i: final.get(i) for i in log.seen} == log.seen


def _model_names(home: Home) -> list[str]:
    from sqlalchemy import select

    from indexer.db import Model

    with home.session() as s:
        return list(s.scalars(select(Model.name)))


def test_concurrent_requests_for_a_new_thumbnail(env, photos: Path, capsys) -> None:
    """Many requests for a thumbnail not made yet: each gets the same whole JPEG."""
    run_cli(capsys, "index", str(photos))
    with serving(create_app()) as base, httpx.Client(base_url=base, timeout=HUNG) as http:
        ids = [h["id"] for h in http.post("/search", json=ALL).json()["results"]]
        for image_id in ids:
            gate = threading.Barrier(8)
            bodies: list[tuple[int, bytes]] = []

            def fetch(
                image_id: int = image_id,
                gate: threading.Barrier = gate,
                bodies: list[tuple[int, bytes]] = bodies,
            ) -> None:
                with httpx.Client(base_url=base, timeout=HUNG) as own:
                    gate.wait()
                    res = own.get(f"/images/{image_id}/thumbnail")
                    bodies.append((res.status_code, res.content))

            threads = [threading.Thread(target=fetch) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(HUNG)
            assert [code for code, _ in bodies] == [200] * 8
            assert len({body for _, body in bodies}) == 1
            img = Image.open(io.BytesIO(bodies[0][1]))
            img.load()  # a truncated file fails here
            assert max(img.size) <= 256
    thumbs = Path(env["PIXSEARCH_HOME"]) / "thumbnails"
    assert [p.name for p in thumbs.rglob("*") if ".tmp" in p.name] == []


def test_a_second_indexing_run_is_refused_while_one_runs(env, photos: Path, capsys) -> None:
    """One indexing run per home: a second one says so in one line and writes nothing."""
    from indexer.housekeeping import home_lock

    run_cli(capsys, "index", str(photos))
    more = photos / "more"
    make_photos(more, 3, start=50)
    home = Home(Settings())
    with home_lock(home):  # what a running `pixsearch index` holds
        res = run_cli(capsys, "index", str(more))
        assert res.code == 1
        assert res.err.strip().splitlines() == [
            f"pixsearch: error: another indexing run is using {home.path}; wait for it to end"
        ]
        assert home.image_count() == 12
        # Searching is never blocked by an indexing run.
        assert len(run_cli(capsys, "search", "--no-cutoff", "x", "-k", "50", "--json").json()) == 12
    assert run_cli(capsys, "index", str(more)).code == 0
    assert home.image_count() == 15


def test_a_ranking_made_on_the_old_index_is_not_served_after_the_swap(
    env, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A query still ranking on the old index when a new one is swapped in must not leave its
    (old) ranking in the page cache for the new data: later queries would miss new photos."""
    from indexer.encoder import get_encoder
    from search.engine import Searcher
    from search.query import Query

    folder = tmp_path / "photos"
    make_photos(folder, 8)
    run_cli(capsys, "index", str(folder))
    settings = Settings()
    searcher = Searcher(Home(settings), get_encoder(settings))
    assert len(searcher.search(Query(text="prime", k=50, cutoff=False)).hits) == 8

    entered, release = threading.Event(), threading.Event()
    stored_vectors = searcher.home.stored_vectors

    def slow_stored_vectors(*args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "slow-query" and not entered.is_set():
            entered.set()  # ranking on the 8-photo index, before the exact re-score
            release.wait(HUNG)
        return stored_vectors(*args, **kwargs)

    monkeypatch.setattr(searcher.home, "stored_vectors", slow_stored_vectors)
    query = Query(text="x", k=50, cutoff=False)
    slow: list[int] = []
    thread = threading.Thread(
        target=lambda: slow.append(len(searcher.search(query).hits)), name="slow-query"
    )
    thread.start()
    try:
        assert entered.wait(HUNG)
        make_photos(folder, 4, start=8)
        run_cli(capsys, "index", str(folder))
        # Another query swaps the 12-photo index in while the slow one is still ranking.
        assert len(searcher.search(Query(text="y", k=50, cutoff=False)).hits) == 12
    finally:
        release.set()
        thread.join(HUNG)
    assert slow == [8]  # it began before the new photos were committed: that is fine
    assert len(searcher.search(query).hits) == 12
