"""`pixsearch demo`: synthetic photos, indexed and captioned with the shipped tiny model,
served on the web page: pixsearch at work in about a minute, without network."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from api.cli_common import overrides, settings

log = logging.getLogger(__name__)

#: The model and captioner the demo runs with (indexer/named_models.py).
DEMO_MODEL = "demo"
DEMO_PORT = 8000


def demo(
    photos: Annotated[
        Path | None,
        typer.Argument(help="Where to write the demo photos [default: HOME/photos]."),
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, max=5000, help="How many.")] = 300,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port; another free one if it is taken.")
    ] = DEMO_PORT,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Make and index the photos, then stop.")
    ] = False,
) -> None:
    """Show pixsearch working offline: make synthetic photos, index and caption them with
    the shipped tiny model (PIXSEARCH_MODEL=demo), and serve the web page.

    The demo has a home of its own (HOME/demo unless --home is given), so it never mixes
    with your photos. The tiny model knows only the demo's shapes: try "a red circle",
    "a large star on a green background", or "more like this" on any photo.
    """
    from api.cli_support import ProgressBar, index_summary
    from indexer.captioners.base import CaptionStore, caption_missing, load_captioner
    from indexer.demo import make_demo_photos
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from indexer.pipeline import Indexer

    base = settings()
    home = base.home if "home" in overrides or "home" in base.model_fields_set else None
    demo_home = home or base.home / "demo"
    overrides.update(home=demo_home, model=DEMO_MODEL, captioner=DEMO_MODEL)
    cfg = settings()
    folder = (photos or demo_home / "photos").expanduser().absolute()
    typer.echo(f"pixsearch demo: writing {count} synthetic photos to {folder}", err=True)
    make_demo_photos(folder, n=count, overwrite=False)
    encoder = get_encoder(cfg)
    captioner = load_captioner(cfg.captioner, clip_model=encoder.key, clip_dim=encoder.dim)
    home_ = Home(cfg)
    bar = ProgressBar() if sys.stderr.isatty() else None
    try:
        report = Indexer(home_, encoder, progress=bar).run([str(folder)])
    finally:
        if bar is not None:
            bar.stop()
    captioned = None
    model = home_.model_row(encoder.key)
    if captioner is not None and model is not None:
        captioned = caption_missing(
            home_, CaptionStore(home_, captioner, encoder.key), model.id, model.dim
        )
    name = captioner.name if captioner else None
    typer.echo(f"pixsearch demo: {index_summary(report, captioned, name)}", err=True)
    typer.echo(
        f"pixsearch demo: search it from here too: pixsearch --home {demo_home} --model demo "
        "search 'a red circle'",
        err=True,
    )
    if no_serve:
        return
    from api.cli_serve import serve

    serve(host=host, port=port if _free(host, port) else 0)


def _free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host` now (else the demo takes any free port)."""
    if port == 0:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            log.info("port %d is taken: serving on another", port)
            return False
    return True
