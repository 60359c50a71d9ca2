"""The command line's terminal chores: logging set-up and the progress bar."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import typer

from api.display import one_line

if TYPE_CHECKING:
    from indexer.types import IndexReport
    from search.query import Hit

log = logging.getLogger(__name__)

#: Libraries that print their own logs: a handler of their own, and a level they set when first
#: imported, from these variables (unless the user set them).
_LIBRARY_VERBOSITY = {
    "huggingface_hub": "HF_HUB_VERBOSITY",
    "transformers": "TRANSFORMERS_VERBOSITY",
}
_USER_VERBOSITY = {var for var in _LIBRARY_VERBOSITY.values() if var in os.environ}


def _printed_by_a_library(record: logging.LogRecord) -> bool:
    """Whether a handler below the root (a library's own) has printed this record already."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None and logger is not logging.root:
        if logger.handlers:
            return True
        logger = logger.parent if logger.propagate else None
    return False


def _an_interrupt(record: logging.LogRecord) -> bool:
    """Whether a library logged the Ctrl-C itself: SQLAlchemy's pool logs, with its traceback,
    a KeyboardInterrupt that lands while it resets a connection, then raises it on. The
    command line says "interrupted" in one line of its own."""
    kind = record.exc_info[0] if record.exc_info else None
    return kind is not None and issubclass(kind, KeyboardInterrupt)


def set_up_logging(verbose: int) -> None:
    """Log to stderr as `pixsearch: LEVEL: message`, libraries quieter unless -v/-vv."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    if not root.handlers:  # an embedding program (or pytest) may have its own
        logging.basicConfig(format="pixsearch: %(levelname)s: %(message)s", stream=sys.stderr)
        handler = root.handlers[0]
        handler.addFilter(lambda r: not _printed_by_a_library(r))
        if verbose < 2:
            # open_clip logs its own failures on the root logger; pixsearch reports them
            # itself as one line, so its copy would only say the same thing twice.
            handler.addFilter(lambda r: "open_clip" not in r.pathname)
            handler.addFilter(lambda r: not _an_interrupt(r))
    root.setLevel(level)
    if verbose < 2:
        for noisy in ("PIL", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # The hub client's retry warnings ("Retrying in 8s [Retry 4/5]") are noise next to
    # pixsearch's own one-line error: by default only its errors show, -v shows warnings.
    lib_level = "error" if verbose == 0 else "warning" if verbose == 1 else "debug"
    for name, var in _LIBRARY_VERBOSITY.items():
        if var not in _USER_VERBOSITY:
            os.environ[var] = lib_level  # read when the library is imported
            if logging.getLogger(name).handlers:  # imported already (an embedding program)
                logging.getLogger(name).setLevel(lib_level.upper())


class ProgressBar:
    """A rich progress bar on stderr, with images per second."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task: Any = None

    def start(self, total: int) -> None:
        """Show the bar for `total` photos."""
        self._progress.start()
        self._task = self._progress.add_task("index", total=total, rate="")

    def advance(self, n: int) -> None:
        """Count `n` more photos done."""
        self._progress.advance(self._task, n)
        speed = self._progress.tasks[0].speed
        self._progress.update(self._task, rate=f"{speed:.1f} img/s" if speed else "")

    def stop(self) -> None:
        """Take the bar off the terminal."""
        self._progress.stop()


def print_hits(hits: list[Hit], as_json: bool, captions: bool = False) -> None:
    """Hits as a table (one line each, whatever the file names hold) or as JSON; with
    `captions`, each hit's caption (a line below it in the table)."""
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits]))
        return
    if not hits:
        typer.echo("no results")
        return
    typer.echo(f"{'score':>7}  {'id':>7}  {'size':>11}  {'taken':<19}  path")
    for h in hits:
        taken = h.taken_at.isoformat(sep=" ") if h.taken_at else "-"
        # One line per hit, whatever the file name holds; --json keeps paths exact.
        path = one_line(h.path)
        typer.echo(f"{h.score:7.4f}  {h.id:>7}  {f'{h.width}x{h.height}':>11}  {taken:<19}  {path}")
        if captions and h.caption:
            typer.echo(f"{'':>39}  {one_line(h.caption)}")


def index_summary(report: IndexReport, captioned: int | None, captioner: str | None) -> str:
    """The one-line summary of an `index` run (the speed only when something was embedded)."""
    done = report.added + report.updated
    speed = (
        f"{report.seconds:.1f} s, {report.images_per_second:.1f} images/s"
        if done
        else f"{report.seconds:.1f} s, nothing new"
    )
    line = (
        f"{report.scanned} scanned: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.moved} moved, {report.removed} removed, "
        f"{len(report.failed)} failed ({speed})"
    )
    if captioned is not None:
        line += f"; {captioned} caption{'' if captioned == 1 else 's'} written ({captioner})"
    return line
