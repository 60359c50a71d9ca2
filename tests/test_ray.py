"""`pixsearch index --ray`: a real Ray cluster on this machine (one for the whole test run),
compared with a local run, and killed in its parts mid-run."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.helpers import ROOT, make_photos, picture, run_cli, run_subprocess, unprivileged


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[tuple[str, dict[str, str], psutil.Process]]:
    """A Ray head on 127.0.0.1 with 2 CPUs, as `ray start --head` starts one: (its address,
    the environment a driver needs to join it, the `ray start` process). Its processes obey
    file permissions as an ordinary user's do (see `unprivileged`), so that a test can show
    them a file that the driver, run as root, can see and read but they cannot."""
    port = _free_port()
    # Short: Ray's Unix sockets live under it (their paths may not exceed 107 bytes).
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # A token of this cluster's own, not the one in ~/.ray: drivers find it in the environment.
    env = {"RAY_AUTH_TOKEN": secrets.token_hex(16)}
    log = open(Path(temp) / "start.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            "--block",
        ],
        env={**os.environ, **env, "RAY_AUTH_MODE": "token", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **unprivileged(),
    )
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (Path(temp) / "start.log").read_text():
            assert proc.poll() is None, (Path(temp) / "start.log").read_text()
            assert time.monotonic() < deadline, "ray start did not start in 180 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env, psutil.Process(proc.pid)
    finally:
        # `ray start` and what it started, all in the session it was started in (theirs alone).
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _vectors(capsys: pytest.CaptureFixture[str], home: Path, out: Path) -> dict[str, np.ndarray]:
    res = run_cli(capsys, "--home", str(home), "export", "--out", str(out))
    assert res.code == 0, res.err
    data = np.load(out)
    return dict(zip(data["paths"].tolist(), data["embeddings"], strict=True))


def _count(home: Path) -> tuple[int, int]:
    """(image rows, distinct paths) in a home's database, read as another process would."""
    db = home / "pixsearch.db"
    if not db.exists():
        return 0, 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT count(*), count(DISTINCT path) FROM images").fetchone()
            return int(row[0]), int(row[1])
    except sqlite3.OperationalError:  # not created yet
        return 0, 0


def test_ray_run_equals_local_run(
    ray_cluster: tuple[str, dict[str, str], psutil.Process],
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, ray_env, _ = ray_cluster
    folder = tmp_path / "photos"
    make_photos(folder, 36)
    make_photos(folder, 4, start=100, fmt="PNG")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    # A photo that the driver sees, but that the cluster's processes may not read.
    [secret] = make_photos(tmp_path / "secret", 1, start=200)
    secret = secret.rename(folder / "secret.jpg")
    secret.chmod(0)
    local = run_cli(capsys, "index", str(folder), "--json")
    assert local.code == 0, local.err
    ray_home = tmp_path / "ray-home"
    res = run_subprocess(
        "--home", str(ray_home), "index", str(folder), "--json", "--ray", address, env=ray_env
    )
    assert res.code == 0, res.err
    got, want = res.json(), local.json()
    assert isinstance(got, dict) and isinstance(want, dict)
    for key in ("scanned", "updated", "unchanged", "moved", "removed"):
        assert got[key] == want[key], key
    assert got["scanned"] == 42
    assert got["added"] == 40
    failed = {f["path"]: f["error"] for f in got["failed"]}
    local_failed = {f["path"]: f["error"] for f in want["failed"]}
    assert sorted(failed) == [str(folder / "broken.jpg"), str(secret)]
    # The broken file fails on a worker as it does here, with the same reason, and where.
    broken = str(folder / "broken.jpg")
    assert failed[broken].startswith(local_failed[broken])
    assert "on Ray node" in failed[broken]
    # The driver could read the secret photo (as root) or not; the workers could not.
    assert "permission denied" in failed[str(secret)].lower()
    assert want["added"] == 40 + (str(secret) not in local_failed)
    mine = _vectors(capsys, Path(env["PIXSEARCH_HOME"]), tmp_path / "local.npz")
    theirs = _vectors(capsys, ray_home, tmp_path / "ray.npz")
    mine.pop(str(secret), None)
    assert sorted(mine) == sorted(theirs)
    cosines = [float(mine[p] @ theirs[p]) for p in mine]
    assert min(cosines) >= 0.999


def _actors(head: psutil.Process) -> list[psutil.Process]:
    """The cluster's embedding actors (Ray names their processes after the stage)."""
    found = []
    for p in head.children(recursive=True):
        try:
            if "MapWorker" in " ".join(p.cmdline()) and "Embedder" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _wait(
    what: str, test: object, proc: subprocess.Popen[str], limit: float = 240, every: float = 0.2
) -> None:
    deadline = time.monotonic() + limit
    while not test():  # type: ignore[operator]
        if proc.poll() is not None:
            return
        assert time.monotonic() < deadline, f"waited {limit} s for {what}"
        time.sleep(every)


def _slow_photos(folder: Path, count: int) -> None:
    """`count` photos of 3 megapixels (PNG: no reduced-scale decoding), distinct by their
    bytes: reading them keeps the cluster's one read CPU busy for a few seconds, so that a
    test can act while a run is under way."""
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    picture(7, (2000, 1500)).save(buf, "PNG")
    for i in range(count):
        # Bytes after the end chunk: another content hash, the same picture.
        (folder / f"big_{i:03d}.png").write_bytes(buf.getvalue() + b"%04d" % i)


def _start(folder: Path, address: str, ray_env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "index", str(folder), "--json", "--ray", address],
        cwd=ROOT,
        # One photo per batch: the driver writes them one by one, so a kill can land between.
        env={**os.environ, **ray_env, "PIXSEARCH_BATCH_SIZE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_driver_then_worker_killed_mid_run_and_resumed(
    ray_cluster: tuple[str, dict[str, str], psutil.Process], env: dict[str, str], tmp_path: Path
) -> None:
    address, ray_env, head = ray_cluster
    folder = tmp_path / "photos"
    count = 60
    _slow_photos(folder, count)
    home = Path(env["PIXSEARCH_HOME"])

    # The driver dies (kill -9) once the first results are written. Its reads are done
    # before its actor has loaded the model, and it then writes everything in a fraction of a
    # second (60 rows in 0.16 s here): the test looks every 5 ms, and freezes the driver
    # before counting. A busy machine may still keep the test from looking in time; then the
    # kill is tried again on a fresh home, so that it lands mid-run.
    for _attempt in range(3):
        driver = _start(folder, address, ray_env)
        try:
            _wait("the first rows", lambda: _count(home)[0] > 0, driver, every=0.005)
            assert driver.poll() is None, driver.communicate()
            driver.send_signal(signal.SIGSTOP)
            written = _count(home)[0]
            driver.kill()
            driver.wait()
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        if written < count:
            break
        shutil.rmtree(home)
    assert 0 < written < count

    # The next run continues; its embedding actor dies (kill -9) as soon as it is there,
    # while the run's files are being read (the tiny model embeds them all in a second once it
    # is loaded: a later kill would find nothing left to do).
    old = {p.pid for p in _actors(head)}  # the killed run's, until Ray has cleaned up
    driver = _start(folder, address, ray_env)
    try:
        _wait("the embedding actor", lambda: {p.pid for p in _actors(head)} - old, driver)
        assert driver.poll() is None, driver.communicate()
        assert _count(home)[0] < count
        for actor in _actors(head):
            if actor.pid not in old:
                actor.kill()
        _, err = driver.communicate(timeout=300)

    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    # Ray starts another actor and retries its batches; or, if the run cannot go on, it says
    # so in one line, and what was written stays.
    assert driver.returncode == 0 or len(err.strip().splitlines()) == 1, err
    done = _count(home)[0]
    if driver.returncode != 0:
        resumed = run_subprocess("index", str(folder), "--json", "--ray", address, env=ray_env)
        assert resumed.code == 0, resumed.err
        summary = resumed.json()
        assert isinstance(summary, dict)
        assert (summary["added"], summary["unchanged"]) == (count - done, done)
    # Every photo once, with its vector: nothing lost, nothing twice.
    assert _count(home) == (count, count)
    with sqlite3.connect(f"file:{home / 'pixsearch.db'}?mode=ro", uri=True) as conn:
        [[embedded]] = conn.execute(
            "SELECT count(*) FROM images JOIN embeddings USING (content_hash)"
        ).fetchall()
    assert embedded == count


def test_unreachable_address_is_one_line_and_writes_nothing(
    env: dict[str, str], photos: Path
) -> None:
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    res = run_subprocess("index", str(photos), "--ray", f"127.0.0.1:{port}")
    assert res.code != 0
    assert time.monotonic() - started < 60
    [line] = res.err.strip().splitlines()
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in line
    assert not Path(env["PIXSEARCH_HOME"]).exists()
    bad = run_subprocess("index", str(photos), env={"PIXSEARCH_RAY_ADDRESS": "nowhere"})
    assert bad.code != 0
    assert bad.err.strip().splitlines() == [
        "pixsearch: error: not a Ray address: 'nowhere' (use auto, local, host:port or "
        "ray://host:port)"
    ]
    assert not Path(env["PIXSEARCH_HOME"]).exists()


def test_without_ray_installed_says_how_to_install_it(env: dict[str, str], photos: Path) -> None:
    # `ray` made unimportable, as in an install without the extra.
    code = "import sys; sys.modules['ray'] = None; from api.cli import main; main(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, "index", str(photos), "--ray", "auto"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert "uv sync --extra ray" in line
    assert not Path(env["PIXSEARCH_HOME"]).exists()


def test_version_mismatch_is_one_line_naming_both_versions() -> None:
    from ray._private.utils import check_version_info

    from indexer.cluster import join_error

    # Ray's own check, given a cluster that reports other versions than this process's.
    with pytest.raises(RuntimeError) as caught:
        check_version_info({"ray_version": "2.9.3", "python_version": "3.10.4"}, "here")
    message = str(join_error("head:6379", caught.value))
    [line] = message.splitlines()
    assert "the Ray cluster at head:6379 runs Ray 2.9.3 on Python 3.10.4" in line
    import platform

    import ray

    assert f"this machine Ray {ray.__version__} on Python {platform.python_version()}" in line


def test_actor_pool_leaves_a_cpu_for_reading_and_uses_every_gpu() -> None:
    from indexer.cluster import Pool, plan_pool

    # A small machine: one actor, on all CPUs but the one left to the read tasks.
    assert plan_pool(2, 0, 2) == Pool(actors=1, cpus=1, gpus=0, read_cpus=1)
    assert plan_pool(4, 0, 4) == Pool(actors=1, cpus=3, gpus=0, read_cpus=1)
    # Bigger ones: actors of at most 4 CPUs, none larger than the smallest node.
    assert plan_pool(16, 0, 16) == Pool(actors=3, cpus=4, gpus=0, read_cpus=1)
    assert plan_pool(16, 0, 2) == Pool(actors=7, cpus=2, gpus=0, read_cpus=1)
    # One CPU: reading and embedding share it (neither could start otherwise).
    assert plan_pool(1, 0, 1) == Pool(actors=1, cpus=0.5, gpus=0, read_cpus=0.5)
    # GPUs: one actor per GPU.
    assert plan_pool(32, 4, 16) == Pool(actors=4, cpus=1, gpus=1, read_cpus=1)
    # Asked for: that many actors, sharing the CPUs.
    assert plan_pool(16, 0, 16, wanted=5) == Pool(actors=5, cpus=3, gpus=0, read_cpus=1)
    # More than fit: as many as fit.
    assert plan_pool(2, 0, 2, wanted=8) == Pool(actors=1, cpus=1, gpus=0, read_cpus=1)
    assert plan_pool(8, 2, 8, wanted=8) == Pool(actors=2, cpus=1, gpus=1, read_cpus=1)


def test_an_on_disk_index_fills_its_shards_on_the_cluster(
    ray_cluster: tuple[str, dict[str, str], psutil.Process], tmp_path: Path
) -> None:
    from indexer import ondisk, ondisk_build
    from indexer.vecstore import StoreRows, write_store

    address, ray_env, _ = ray_cluster
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((40, 32))
    vecs = centres[rng.integers(0, 40, 3000)] + 0.5 * rng.standard_normal((3000, 32))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(1, 3001, dtype=np.int64)
    store = write_store(tmp_path / "vectors.f16", 32, 1, [(ids, vecs)], 3001)
    kind = "OnDisk,OPQ4,IVF16,PQ4"
    # Three shards of a thousand: by this process's threads, then (in a process of its own,
    # as an indexing run or a server would build) by the cluster's tasks.
    here = ondisk_build.build(
        kind, 32, ids, StoreRows(store, ids), tmp_path / "here.faiss", shard_rows=1000
    )
    code = (
        "import logging, sys; import numpy as np; from pathlib import Path\n"
        "from indexer import ondisk_build\n"
        "from indexer.vecstore import StoreRows, open_store\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "store, _ = open_store(Path(sys.argv[1]), 32, 1)\n"
        "ids = np.arange(1, 3001, dtype=np.int64)\n"
        "base = ondisk_build.build(sys.argv[2], 32, ids, StoreRows(store, ids), Path(sys.argv[3]),"
        " shard_rows=1000, ray_address=sys.argv[4])\n"
        "print(base.folder)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "vectors.f16"), kind,
         str(tmp_path / "there.faiss"), address],
        cwd=ROOT, env={**os.environ, **ray_env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"filling 3 shards on the Ray cluster at {address}" in proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    # The shards were merged into the base and removed; the base opens as any other.
    assert not list(folder.glob("shard-*"))
    there = ondisk.open_base(folder)
    assert there.ntotal == here.ntotal == 3000
    for index in (here, there):
        index.nprobe = 16
    q = vecs[:20]
    assert np.array_equal(there.search(q, 10)[1], here.search(q, 10)[1])
