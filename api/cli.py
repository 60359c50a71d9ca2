"""The `pixsearch` command line. Heavy modules are imported inside commands: --help is instant."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from api import cli_demo, cli_search
from api.cli_common import JsonFlag, overrides, settings
from api.cli_support import ProgressBar, index_summary, set_up_logging
from api.cli_watch import PollFlag
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


def _searcher() -> Any:
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from search.engine import Searcher

    cfg = settings()
    return Searcher(Home(cfg), get_encoder(cfg))


app.command()(cli_search.search)
app.command()(cli_search.similar)
app.command()(cli_demo.demo)


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Show the home, the model, its device and precision (and why), how many images are
    indexed and the index size."""
    from indexer.autoprecision import describe
    from indexer.encoder import model_key
    from indexer.home import Home
    from indexer.lookups import database_bytes

    cfg = settings()
    home = Home(cfg)

    key = model_key(cfg.model, cfg.pretrained)
    info: dict[str, Any] = {
        "home": str(home.path),
        "model": key,
        **describe(cfg),
        "images": 0,
        "indexed_with_model": 0,
        "index_type": None,
        "index_bytes": 0,
        "database_bytes": 0,
        "home_bytes": 0,
        "server": None,
    }
    if home.exists():
        info["images"] = home.image_count()
        row = home.model_row(key)
        if row is not None:
            info["indexed_with_model"] = home.count_vectors(row.id)
            idx = home.load_index(key, row.id, row.dim)
            info["index_type"] = idx.kind
            path = home.index_path(key)
            info["index_bytes"] = path.stat().st_size if path.exists() else 0
        info["home_bytes"] = home.size_on_disk()
        info["database_bytes"] = database_bytes(home)
        server = cli_search.server_of(cfg)
        info["server"] = server.url if server is not None else None
    if as_json:
        typer.echo(json.dumps(info))
        return
    for key_, value in info.items():
        if key_ == "precision_trials":
            value = "; ".join(_trial_text(t) for t in value)
        typer.echo(f"{key_:>18}: {value if value is not None else '-'}")


def _trial_text(trial: dict[str, Any]) -> str:
    if trial["refused"] and trial["images_per_second"] is None:
        return f"{trial['precision']}: {trial['refused']}"
    speed = f"{trial['precision']} {trial['images_per_second']:.1f} img/s"
    verdict = f"refused, {trial['refused']}" if trial["refused"] else "kept fidelity"
    return f"{speed}, min cosine {trial['min_cosine']:.4f}, {verdict}"


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="The .npz file to write.")],
) -> None:
    """Write ids, paths and float32 unit-norm embeddings to an .npz file."""
    import numpy as np

    from indexer.errors import InvalidInput
    from indexer.vectors import atomic_write

    searcher = _searcher()
    model = searcher.model()
    ids, vecs = searcher.home.stored_vectors(model.id, model.dim)
    rows = searcher.home.images_by_id([int(i) for i in ids])
    paths = np.asarray([rows[int(i)].path for i in ids], dtype=str)
    if out.suffix != ".npz":
        raise InvalidInput(f"{out}: the output file must end in .npz")
    import io

    buf = io.BytesIO()
    np.savez(buf, ids=ids, paths=paths, embeddings=vecs.astype(np.float32))
    try:
        atomic_write(out.expanduser().absolute(), buf.getvalue())
    except OSError as exc:
        raise InvalidInput(f"cannot write {out}: {exc.strerror or exc}") from None
    typer.echo(f"wrote {len(ids)} embeddings of dimension {model.dim} to {out}")


@app.command(name="eval")
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="captions.csv folder or COCO-captions layout.")],
    as_json: JsonFlag = False,
    eval_home: Annotated[
        Path | None, typer.Option("--eval-home", help="Index here instead of a temporary home.")
    ] = None,
    captions: Annotated[
        bool, typer.Option(help="Score generated captions (BLEU-4, CIDEr) if a captioner is set.")
    ] = True,
    absent: Annotated[
        Path | None,
        typer.Option(
            "--absent",
            help="Queries about things the photos do not show, one per line (default: the "
            "data set's absent.txt): how many the cut-off answers empty.",
        ),
    ] = None,
) -> None:
    """Measure retrieval quality: recall@1/5/10 both ways, per rerank setting, and the cut-off."""
    from indexer.encoder import get_encoder
    from search.evaluate import evaluate as run_eval

    cfg = settings()
    result: Any = run_eval(
        dataset, cfg, get_encoder(cfg), home=eval_home, captions=captions, absent=absent
    )
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['images']} images, {result['queries']} queries, {result['seconds']} s")
    typer.echo(f"{'':<24}{'R@1':>8}{'R@5':>8}{'R@10':>8}")
    rows = [
        (f"text->image ({mode})", v["text_to_image"]) for mode, v in result["by_rerank"].items()
    ]  # type: ignore[attr-defined]
    rows.append(("text->image (cut-off)", result["cutoff"]["text_to_image"]))
    rows.append(("image->text", result["image_to_text"]))
    for name, r in rows:
        typer.echo(f"{name:<24}{r['recall@1']:>8.3f}{r['recall@5']:>8.3f}{r['recall@10']:>8.3f}")
    if "notice" in result:
        typer.echo(f"notice: {result['notice']}")
    similar = result["cutoff"]["more_like_this_hits"]
    typer.echo(
        f"more like this with the cut-off: median {similar['median']:g} hits of "
        f"{similar['k']} (min {similar['min']})"
    )
    if "absent" in result["cutoff"]:
        a = result["cutoff"]["absent"]
        typer.echo(
            f"{a['queries']} queries about absent things: {a['empty']:.0%} answered empty, "
            f"{a['at_most_3']:.0%} with at most 3 photos"
        )
    if "captions" in result:
        c = result["captions"]
        typer.echo(
            f"captions ({c['captioner']}): BLEU-4 {c['bleu@4']:.3f}, "  # type: ignore[index]
            f"CIDEr {c['cider']:.3f}"
        )  # type: ignore[index]


@app.command()
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
