"""`pixsearch watch` and `serve --watch`: keep the index current as photos come and go."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from api.display import one_line

if TYPE_CHECKING:
    from api.service import Service
    from indexer.watch import Watcher, WatchRun

log = logging.getLogger(__name__)

PollFlag = Annotated[
    bool,
    typer.Option(
        "--poll",
        help="Rescan the folders instead of waiting for file events (network shares) "
        "[PIXSEARCH_WATCH_POLLING].",
    ),
]

#: How many failed files a run lists (like `index`).
SHOW_FAILED = 20


def _printer(err: bool) -> Any:
    """Prints one line per run that changed something, and the files that failed."""

    def show(run: WatchRun) -> None:
        from indexer.watch import summary

        line = summary(run.report)
        if line is None:
            return
        typer.echo(line, err=err)
        failed = run.report.failed
        for failure in failed[:SHOW_FAILED]:
            typer.echo(f"  failed: {one_line(failure.path)}: {failure.error}", err=True)
        if len(failed) > SHOW_FAILED:
            typer.echo(f"  ... and {len(failed) - SHOW_FAILED} more", err=True)

    return show


def _ready(watcher: Watcher) -> None:
    modes = watcher.modes
    how = ", ".join(sorted({m for m in modes.values() if m})) or "file events"
    what = one_line(next(iter(modes))) if len(modes) == 1 else f"{len(modes)} folders"
    typer.echo(f"pixsearch: watching {what} ({how}); Ctrl-C stops", err=True)


def watch(
    paths: Annotated[list[Path], typer.Argument(help="Folders to watch (and index first).")],
    poll: PollFlag = False,
    hidden: Annotated[bool, typer.Option("--hidden", help="Include hidden files/folders.")] = False,
) -> None:
    """Index folders, then keep indexing them as photos are added, changed, moved or deleted."""
    from api.cli_common import settings
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from indexer.watch import Watcher

    extra: dict[str, Any] = {}
    if poll:
        extra["watch_polling"] = True
    if hidden:
        extra["include_hidden"] = True
    cfg = settings(**extra)
    watcher = Watcher(
        Home(cfg), get_encoder(cfg), paths, on_run=_printer(err=False), on_ready=_ready
    )

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # stopped by a service manager: the same clean stop as Ctrl-C

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        watcher.run()
    except KeyboardInterrupt:
        # A run cut short is safe (each batch is committed whole): the next start catches up.
        typer.echo("pixsearch: stopped watching", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


class Background:
    """A watcher in a thread of `pixsearch serve`; the server's searcher sees each run's
    photos at its next query (the database's generation moved on)."""

    def __init__(self, service: Service, paths: list[Path]) -> None:
        from indexer.watch import Watcher

        service.home.check_writable()
        self.watcher = Watcher(
            service.home, service.encoder, paths, on_run=_printer(err=True), on_ready=_ready
        )
        self.thread = threading.Thread(target=self._run, name="pixsearch-watch", daemon=True)

    def _run(self) -> None:
        try:
            self.watcher.run()
        except Exception as exc:  # the server goes on serving what is indexed
            log.error("watching stopped: %s", exc)
            log.debug("watching stopped", exc_info=True)

    def start(self) -> None:
        """Start watching (the catch-up run first) while the server starts."""
        self.thread.start()

    def stop(self) -> None:
        """Stop after the batch being written, if any."""
        self.watcher.stop()
        self.thread.join(60)
