"""Test helpers: images made with Pillow, and the CLI run in-process or as a subprocess."""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent


def picture(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A distinct picture per seed: a smooth two-colour gradient with a few shapes on it."""
    rng = np.random.default_rng(seed)
    w, h = size
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None]
    if rng.random() < 0.5:
        t = np.linspace(0, 1, h)[:, None, None]
    arr = (a * (1 - t) + b * t) * np.ones((h, w, 1))
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return img


def make_photos(
    folder: Path, count: int, start: int = 0, fmt: str = "JPEG", size: tuple[int, int] = (160, 120)
) -> list[Path]:
    """Write `count` distinct pictures into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    paths = []
    for i in range(start, start + count):
        path = folder / f"img_{i:04d}.{ext}"
        picture(i, size).save(path, fmt)
        paths.append(path)
    return paths


@dataclass
class Result:
    """What a CLI run printed and returned."""

    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


def run_cli(capsys: object, *args: str) -> Result:
    """Run `pixsearch ARGS` in this process (the tiny model stays loaded between runs)."""
    from api.cli import main

    capsys.readouterr()  # type: ignore[attr-defined]
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()  # type: ignore[attr-defined]
    return Result(code, captured.out, captured.err)


def run_subprocess(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, bound: bool = False
) -> Result:
    """Run `pixsearch ARGS` as a separate process, as a user would; `bound`: held to file
    permissions (see `unprivileged`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
        **(unprivileged() if bound else {}),
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _drop_file_capabilities() -> None:
    # PR_CAPBSET_DROP of CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER: the program
    # this child then runs as root has no way past file permissions.
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def unprivileged() -> dict[str, Any]:
    """subprocess keyword arguments that make a child obey file permissions and read-only
    modes, as an ordinary user's process does.

    As root (CI), the child keeps uid 0 but loses the capabilities that override file
    permissions: `nobody` cannot run this interpreter when it lives under /root. Files the
    tests chmod are root's, so their owner bits then apply to the child.
    """
    if os.geteuid() != 0:
        return {}
    return {"preexec_fn": _drop_file_capabilities}


def start_serve(env: dict[str, str], *, bound: bool = False) -> tuple[subprocess.Popen[str], str]:
    """Start `pixsearch serve --port 0`; (process, base URL) once it says where it serves.
    `bound`: without root's power over file permissions (see `unprivileged`)."""
    proc, lines = spawn_serve(env, bound=bound)
    said: list[str] = []
    while proc.poll() is None or not lines.empty():
        try:
            said.append(next_line(lines, 180))
        except queue.Empty:
            break
        found = re.search(r"serving (http://\S+:\d+)", said[-1])
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError(f"serve did not start: {chr(10).join(said)}")


def start_index(
    folder: Path, env: dict[str, str], *, batch: int = 4, quiet: bool = False
) -> subprocess.Popen[str]:
    """Start `pixsearch index FOLDER --json` as a separate process (small batches, one reader
    thread, so that tests can stop it at chosen moments); `quiet` discards its output."""
    out = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "index", str(folder), "--json"],
        cwd=ROOT,
        env={
            **os.environ,
            **env,
            "PIXSEARCH_BATCH_SIZE": str(batch),
            "PIXSEARCH_WORKERS": "1",
        },
        stdout=out,
        stderr=out,
        text=True,
    )


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit, all-black PNG of width x height, written row by row: a few tens of KB that
    decode to width x height bytes (and four times that as RGB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    squeeze = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    idat = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    png = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + png


#: A minimal Encapsulated PostScript file: Pillow hands such files to Ghostscript.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n0 0 moveto 100 100 lineto stroke\n"


def fake_ghostscript(folder: Path) -> tuple[str, Path]:
    """A `gs` that only leaves a marker file when run: (PATH with it first, the marker)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "gs-was-run"
    script = folder / "gs"
    script.write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 1\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}", marker


def post_search(client: Any, **body: object) -> dict[str, Any]:
    """POST /search through a TestClient; the answer's JSON (asserting a 200)."""
    res = client.post("/search", json=body)
    assert res.status_code == 200, res.text
    return res.json()  # type: ignore[no-any-return]


def spawn_serve(
    env: dict[str, str], *flags: str, host: str | None = None, bound: bool = False
) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """Start `pixsearch [FLAGS] serve [--host HOST] --port 0` (any free port), as a user runs
    it; its stderr lines arrive in the queue."""
    where = ["--host", host] if host else []
    return spawn_cli(env, *flags, "serve", *where, "--port", "0", bound=bound)


def spawn_cli(
    env: dict[str, str], *args: str, bound: bool = False
) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """Start `pixsearch ARGS` in a process of its own; its stderr lines arrive in the queue."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **(unprivileged() if bound else {}),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: [lines.put(x) for x in stream], daemon=True).start()
    return proc, lines


def next_line(lines: queue.Queue[str], timeout: float) -> str:
    """The next stderr line of a process started by `spawn_serve`."""
    return lines.get(timeout=timeout).rstrip("\n")


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread() -> Iterator[str]:
    """The app of the current settings (environment) served by uvicorn in a thread: its URL."""
    import uvicorn

    from api.server import create_app

    srv = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{srv.config.port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
