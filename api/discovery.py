"""Finding the `pixsearch serve` of a home: a small file in the home says where it listens.

`serve` writes it once it listens and removes it when it stops; a file left by a server
that died is recognised (its process is gone, or nothing answers `/health` at its address)
and ignored, so a command never waits on a dead server. Light on imports: the command line
reads it before deciding whether to load any model.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "server.json"
#: Seconds a health check may take before the server counts as not there.
HEALTH_TIMEOUT = 0.5


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Where a running server for the home answers, and what it answers with."""

    url: str  # http://HOST:PORT, reachable from this machine
    pid: int
    key_required: bool
    model: str  # the key of the CLIP it searches with (ARCH/WEIGHTS)


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to `host`."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def announce(home: Path, info: ServerInfo) -> Path:
    """Write the home's server file (atomically; readable by its owner only)."""
    path = home / FILE_NAME
    tmp = home / f".{FILE_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(info), f)
    os.replace(tmp, path)
    return path


def withdraw(home: Path) -> None:
    """Remove the server file if this process wrote it (another server may have since)."""
    path = home / FILE_NAME
    info = _read(path)
    if info is not None and info.pid == os.getpid():
        try:
            path.unlink()
        except OSError:
            log.debug("cannot remove %s", path, exc_info=True)


def find_server(home: Path, timeout: float = HEALTH_TIMEOUT) -> ServerInfo | None:
    """The running server of `home`, or None (no file, its process gone, or no answer)."""
    path = home / FILE_NAME
    info = _read(path)
    if info is None:
        return None
    if not _alive(info.pid):
        log.debug("ignoring %s: process %d is gone", path, info.pid)
        return None
    try:
        with urllib.request.urlopen(f"{info.url}/health", timeout=timeout) as response:
            if response.status == 200:
                return info
    except (OSError, ValueError):
        log.debug("ignoring %s: %s does not answer", path, info.url, exc_info=True)
    return None


def _read(path: Path) -> ServerInfo | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerInfo(
            url=str(data["url"]),
            pid=int(data["pid"]),
            key_required=bool(data["key_required"]),
            model=str(data["model"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.debug("ignoring unreadable %s", path, exc_info=True)
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: the health check decides
    except OSError:
        return False
    return True


def post_json(
    info: ServerInfo, path: str, body: dict[str, object], api_key: str | None, timeout: float
) -> dict[str, object]:
    """POST `body` to the server; its JSON answer. `urllib.error.HTTPError` for an error
    status, `OSError` when it cannot be reached."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["X-API-Key"] = api_key
    request = urllib.request.Request(
        f"{info.url}{path}", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if not isinstance(answer, dict):
        raise ValueError(f"unexpected answer from {info.url}{path}")
    return answer


def error_detail(exc: urllib.error.HTTPError) -> str:
    """The one-line reason in an error answer of the API (`detail`)."""
    try:
        detail = json.loads(exc.read()).get("detail")
    except (OSError, ValueError, AttributeError):
        detail = None
    if isinstance(detail, list) and detail:  # a validation error: the first problem
        first = detail[0]
        if isinstance(first, dict):
            where = ".".join(str(p) for p in first.get("loc", ())[1:])
            detail = f"{where}: {first.get('msg')}" if where else first.get("msg")
    return str(detail or exc.reason)
