"""The `pixsearch` command line. Heavy modules are imported inside commands: --help is instant."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from api import cli_admin, cli_demo, cli_search, cli_serve
from api.cli_common import JsonFlag, overrides, settings
from api.cli_support import ProgressBar, index_summary, set_up_logging
from api.cli_watch import watch as watch_command
from api.display import one_line

log = logging.getLogger(__name__)

app = typer.Typer(
    name="pixsearch",
    help="Local photo search: index folders of photos, then search them by text or by example.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _global(
    home: Annotated[Path | None, typer.Option(help="Data folder [env PIXSEARCH_HOME].")] = None,
    model: Annotated[str | None, typer.Option(help="open_clip model [PIXSEARCH_MODEL].")] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="Pretrained tag or checkpoint [PIXSEARCH_PRETRAINED].")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps [env].")] = None,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")] = 0,
) -> None:
    """Flags given here override the PIXSEARCH_* environment variables."""
    overrides.clear()
    for key, value in (
        ("home", home),
        ("model", model),
        ("pretrained", pretrained),
        ("device", device),
    ):
        if value is not None:
            overrides[key] = value
    set_up_logging(verbose)


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders and files to index.")],
    as_json: JsonFlag = False,
    hidden: Annotated[bool, typer.Option("--hidden", help="Include hidden files/folders.")] = False,
    batch_size: Annotated[int | None, typer.Option(min=1, max=4096)] = None,
    workers: Annotated[int | None, typer.Option(min=0, max=256, help="Decoding threads.")] = None,
    captions: Annotated[
        bool, typer.Option("--captions", help="Also caption every image (PIXSEARCH_CAPTIONER).")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Read and embed on a Ray cluster: auto, local, or host:port "
            "[PIXSEARCH_RAY_ADDRESS].",
        ),
    ] = None,
) -> None:
    """Index photos: new files are added, changed ones updated, moved ones followed.

    With --captions, images without a stored caption get one (and the summary says how
    many were written)."""
    from indexer.captioners.base import CaptionStore, caption_missing, load_captioner
    from indexer.cluster import Cluster
    from indexer.encoder import get_encoder
    from indexer.errors import InvalidInput
    from indexer.home import Home
    from indexer.pipeline import Indexer

    extra: dict[str, Any] = {"include_hidden": True} if hidden else {}
    if batch_size:
        extra["batch_size"] = batch_size
    if workers is not None:
        extra["workers"] = workers
    if ray is not None:
        extra["ray_address"] = ray
    cfg = settings(**extra)
    cluster = Cluster(cfg.ray_address) if cfg.ray_address else None
    encoder = get_encoder(cfg)
    captioner = None
    if captions:
        # Loaded first, so a missing captioner, or one made for another CLIP, fails before
        # any work is done.
        captioner = load_captioner(cfg.captioner, clip_model=encoder.key, clip_dim=encoder.dim)
        if captioner is None:
            raise InvalidInput("--captions needs a captioner: set PIXSEARCH_CAPTIONER")
    home = Home(cfg)
    bar = ProgressBar() if sys.stderr.isatty() else None
    try:
        report = Indexer(home, encoder, progress=bar, cluster=cluster).run([str(p) for p in paths])
    finally:
        if bar is not None:
            bar.stop()
    captioned = None
    if captioner is not None:
        captioned = 0
        model = home.model_row(encoder.key)
        if model is not None:
            store = CaptionStore(home, captioner, encoder.key)
            captioned = caption_missing(home, store, model.id, model.dim)
    if as_json:
        out = report.to_dict()
        if captioned is not None:
            out["captioned"] = captioned
        typer.echo(json.dumps(out))
        return
    typer.echo(index_summary(report, captioned, captioner.name if captioner else None))
    for failure in report.failed[:20]:
        typer.echo(f"  failed: {one_line(failure.path)}: {failure.error}", err=True)
    if len(report.failed) > 20:
        typer.echo(f"  ... and {len(report.failed) - 20} more (see --json)", err=True)


app.command()(cli_search.search)
app.command()(cli_search.similar)
app.command()(cli_demo.demo)
app.command()(cli_admin.status)
app.command()(cli_admin.export)
app.command(name="eval")(cli_admin.evaluate)
app.command()(cli_serve.serve)
app.command(name="watch")(watch_command)


@app.command()
def models() -> None:
    """List the open_clip architectures and pretrained tags pixsearch can use."""
    import open_clip

    for name, tag in open_clip.list_pretrained():
        typer.echo(f"{name:<32} {tag}")


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"pixsearch: error: {message}\n")
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every error is one line on stderr and an exit status, never a traceback."""
    import click

    from indexer.errors import PixsearchError

    try:
        code = typer.main.get_command(app).main(
            args=argv, prog_name="pixsearch", standalone_mode=False
        )
        if code == 130:  # typer turns Ctrl-C into this exit status
            _fail("interrupted; run the same command again to continue", 130)
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except PixsearchError as exc:
        _fail(str(exc), 1)
    except click.exceptions.Abort:
        _fail("interrupted; run the same command again to continue", 130)
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to continue", 130)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except BrokenPipeError:
        raise SystemExit(0) from None
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        log.debug("internal error", exc_info=True)
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with -vv for details)", 70)


if __name__ == "__main__":
    main()
