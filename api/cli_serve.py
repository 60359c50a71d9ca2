"""`pixsearch serve`: the web page and HTTP API under uvicorn, announced in the home's
server file (which `search` and `similar` look for) while it runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from api.cli_common import settings
from api.cli_watch import PollFlag

log = logging.getLogger(__name__)


def serve(
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0: any free port.")] = 8000,
    watch: Annotated[
        list[Path] | None,
        typer.Option("--watch", help="Also keep this folder indexed (repeat for more)."),
    ] = None,
    poll: PollFlag = False,
) -> None:
    """Run the web page and HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from api.cli_watch import Background
    from api.discovery import ServerInfo, announce, local_url, withdraw
    from api.protocol import header_deadline
    from api.security import is_loopback
    from api.server import create_app
    from api.service import Service

    class Server(uvicorn.Server):
        """uvicorn, saying where it serves once it does (models loaded, socket bound), on
        stderr and in the home's server file (which `search` and `similar` look for)."""

        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()[1] if self.servers else port
                where = f"[{host}]" if ":" in host else host
                typer.echo(f"pixsearch: serving http://{where}:{bound} (API docs: /docs)", err=True)
                info = ServerInfo(
                    local_url(host, bound), os.getpid(), bool(cfg.api_key), service.encoder.key
                )
                try:
                    announce(service.home.path, info)
                except OSError as exc:  # the page works without it; the CLI just won't ask
                    log.warning("cannot write the server file in %s: %s", service.home.path, exc)

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            # Here, not only after run(): uvicorn re-raises a SIGTERM once it has stopped,
            # which ends the process before any `finally` of ours.
            withdraw(service.home.path)
            await super().shutdown(sockets=sockets)

    cfg = settings(**({"watch_polling": True} if poll else {}))
    if not is_loopback(host):
        if cfg.api_key:
            log.warning("serving on %s: requests need the API key", host)
        else:
            log.warning(
                "SERVING YOUR PHOTOS ON %s WITHOUT AN API KEY: anyone who can reach this "
                "address can search and download them. Set PIXSEARCH_API_KEY.",
                host,
            )
    # Loaded before uvicorn starts, not in the app's start-up: a missing model is then one
    # line (main() reports it), not uvicorn's traceback of a failed start-up.
    service = Service.start(cfg)
    config = uvicorn.Config(
        create_app(cfg, service, host=host),
        host=host,
        port=port,
        log_level="warning",
        # Idle connections go after 5 s; past max_connections new requests get 503 rather
        # than a share of a machine that slow clients hold open.
        timeout_keep_alive=5,
        limit_concurrency=cfg.max_connections,
        # Headers dribbled in (slowloris) would otherwise hold those connections for ever.
        http=header_deadline(cfg.header_timeout),
    )
    watcher = Background(service, watch) if watch else None
    if watcher is not None:
        watcher.start()
    try:
        Server(config).run()
    finally:
        if watcher is not None:
            watcher.stop()
        withdraw(service.home.path)
