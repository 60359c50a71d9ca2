"""`pixsearch search` and `similar`: asked of the home's running server when there is one,
else answered here, loading only what the query needs (the text tower for a text).

A server answers in milliseconds: its models and index are loaded. This path imports no
torch, open_clip or FAISS (`python -X importtime -m api.cli search ...` shows it), and the
filters, negatives, captions and cut-off mean the same on both paths.
"""

from __future__ import annotations

import logging
import os
import urllib.error
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from api.cli_common import JsonFlag, KOption, settings

if TYPE_CHECKING:
    from api.discovery import ServerInfo
    from indexer.settings import Settings
    from search.query import Hit

log = logging.getLogger(__name__)

#: The most results the API gives per request; larger `-k` are answered here.
SERVER_MAX_K = 200
#: Seconds a server may take to answer a query (a first query may load a captioner).
SERVER_TIMEOUT = 120.0

After = Annotated[
    str | None, typer.Option("--after", help="Taken on or after this day (YYYY-MM-DD).")
]
Before = Annotated[
    str | None, typer.Option("--before", help="Taken on or before this day (YYYY-MM-DD).")
]
Folder = Annotated[str | None, typer.Option("--folder", help="Only photos under this folder.")]
Camera = Annotated[str | None, typer.Option("--camera", help="Camera make or model.")]
Format = Annotated[str | None, typer.Option("--format", help="File format: jpeg, png, heif...")]
MinWidth = Annotated[int | None, typer.Option("--min-width", min=1, help="At least this wide.")]
MinHeight = Annotated[int | None, typer.Option("--min-height", min=1, help="At least this high.")]
Not = Annotated[
    list[str] | None,
    typer.Option("--not", help="Push results away from this text (repeatable)."),
]
Captions = Annotated[
    bool, typer.Option("--captions", help="Caption the hits (PIXSEARCH_CAPTIONER; stored).")
]
Cutoff = Annotated[
    bool,
    typer.Option(
        "--cutoff/--no-cutoff",
        help="Drop hits that score like unrelated photos, as the web page does (the default); "
        "--no-cutoff: the k closest, however weak.",
    ),
]


@dataclass(frozen=True, slots=True)
class Options:
    """What `search` and `similar` share, checked once."""

    k: int
    negative: tuple[str, ...]
    filters: dict[str, Any]  # FiltersIn fields that are set, as JSON values
    captions: bool
    cutoff: bool


def _options(
    k: int,
    after: str | None,
    before: str | None,
    folder: str | None,
    camera: str | None,
    fmt: str | None,
    min_width: int | None,
    min_height: int | None,
    negative: list[str] | None,
    captions: bool,
    cutoff: bool,
) -> Options:
    from pydantic import ValidationError

    from api.schemas import FiltersIn
    from indexer.errors import InvalidInput

    prefix = os.path.abspath(os.path.expanduser(folder)) if folder else None
    try:
        filters = FiltersIn(
            taken_after=_day(after, "--after"),
            taken_before=_day(before, "--before"),
            path_prefix=prefix,
            camera=camera,
            format=fmt.lower().lstrip(".") if fmt else None,
            min_width=min_width,
            min_height=min_height,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInput(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    words = tuple(n.strip() for n in negative or () if n.strip())
    if len(words) > 16:
        raise InvalidInput("at most 16 --not texts")
    return Options(
        k=k,
        negative=words,
        filters=filters.model_dump(mode="json", exclude_none=True),
        captions=captions,
        cutoff=cutoff,
    )


def _day(value: str | None, flag: str) -> date | None:
    from indexer.errors import InvalidInput

    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{flag}: '{value}' is not a day (YYYY-MM-DD)") from None


def search(
    text: Annotated[str, typer.Argument(help="What to look for, in words.")],
    k: KOption = 10,
    as_json: JsonFlag = False,
    after: After = None,
    before: Before = None,
    folder: Folder = None,
    camera: Camera = None,
    fmt: Format = None,
    min_width: MinWidth = None,
    min_height: MinHeight = None,
    negative: Not = None,
    captions: Captions = False,
    cutoff: Cutoff = True,
) -> None:
    """Find photos matching a text."""
    from indexer.errors import InvalidInput

    if not text.strip():
        raise InvalidInput("the query text is empty")
    opts = _options(
        k, after, before, folder, camera, fmt, min_width, min_height, negative, captions, cutoff
    )
    cfg = settings()
    body = {"text": text, "rerank": "standard"}
    hits = _ask_server(cfg, body, opts)
    if hits is None:
        hits = _answer_here(cfg, opts, text=text, text_only=cfg.text_tower_only)
    _print(hits, as_json, opts.captions)


def similar(
    image: Annotated[str, typer.Argument(help="An indexed image id, or the path of any image.")],
    k: KOption = 10,
    as_json: JsonFlag = False,
    after: After = None,
    before: Before = None,
    folder: Folder = None,
    camera: Camera = None,
    fmt: Format = None,
    min_width: MinWidth = None,
    min_height: MinHeight = None,
    negative: Not = None,
    captions: Captions = False,
    cutoff: Cutoff = True,
) -> None:
    """Find photos similar to an image (an indexed one is its own first hit)."""
    from indexer.errors import NotFound

    opts = _options(
        k, after, before, folder, camera, fmt, min_width, min_height, negative, captions, cutoff
    )
    by_id = image.lstrip("-").isdigit() and not os.path.exists(image)
    if by_id and not 0 < int(image) < 2**62:  # no SQLite row id can be this
        raise NotFound(f"no indexed image has id {int(image)}")
    cfg = settings()
    hits = None
    if by_id:  # a path is embedded here: the server could not read the same file
        hits = _ask_server(cfg, {"image_id": int(image), "rerank": "none"}, opts)
    if hits is None:
        hits = _answer_here(cfg, opts, image=image, text_only=by_id and cfg.text_tower_only)
    _print(hits, as_json, opts.captions)


def _ask_server(cfg: Settings, what: dict[str, Any], opts: Options) -> list[Hit] | None:
    """The hits from the home's running server, or None to answer here (no server, one
    with another model, or a page larger than the API gives)."""
    from api.discovery import error_detail, find_server, post_json
    from indexer.encoder import model_key
    from indexer.errors import InvalidInput, NotFound

    if opts.k > SERVER_MAX_K or cfg.database_url:
        return None
    server = find_server(cfg.home)
    if server is None:
        return None
    if server.model != model_key(cfg.model, cfg.pretrained):
        log.info("the server at %s searches with %s: answering here", server.url, server.model)
        return None
    body = {
        **what,
        "k": opts.k,
        "negative": list(opts.negative),
        "filters": opts.filters,
        "captions": opts.captions,
        "cutoff": opts.cutoff,
    }
    try:
        answer = post_json(server, "/search", body, cfg.api_key, SERVER_TIMEOUT)
    except urllib.error.HTTPError as exc:
        detail = error_detail(exc)
        if exc.code == 404:
            raise NotFound(detail) from None
        if exc.code in (401, 403):
            raise InvalidInput(
                f"the server at {server.url} refused the query ({detail}): set PIXSEARCH_API_KEY"
            ) from None
        if 400 <= exc.code < 500:
            raise InvalidInput(detail) from None
        log.warning("the server at %s failed (%s): answering here", server.url, detail)
        return None
    except (OSError, ValueError) as exc:  # it stopped since the health check
        log.info("the server at %s did not answer (%s): answering here", server.url, exc)
        return None
    log.info("answered by the server at %s", server.url)
    _notice(answer.get("notice"))
    results = answer.get("results")
    return [_hit(h) for h in results] if isinstance(results, list) else []


def _hit(row: dict[str, Any]) -> Hit:
    from search.query import Hit

    taken = row.get("taken_at")
    return Hit(
        id=int(row["id"]),
        path=str(row["path"]),
        score=float(row["score"]),
        width=int(row["width"]),
        height=int(row["height"]),
        taken_at=datetime.fromisoformat(taken) if taken else None,
        caption=row.get("caption"),
    )


def _answer_here(
    cfg: Settings,
    opts: Options,
    *,
    text: str | None = None,
    image: str | None = None,
    text_only: bool,
) -> list[Hit]:
    """The hits computed in this process; the model is loaded only if the query needs it
    (a text; an image file that is not indexed), and for a text without its image tower."""
    from indexer.captioners.base import any_captions, load_captioner
    from indexer.encoder import get_encoder
    from indexer.errors import ModelUnavailable
    from indexer.home import Home
    from search.captions import CaptionService
    from search.engine import Searcher
    from search.query import Filters, Query

    home = Home(cfg)
    encoder = get_encoder(cfg, text_only=text_only)
    service = None
    # Stored captions also lift hits whose caption has the query's words (as a server's
    # do): with captions in the home, the captioner is needed even without --captions.
    if opts.captions or (cfg.lexical_weight > 0 and any_captions(home)):
        try:
            captioner = load_captioner(cfg.captioner, clip_model=encoder.key, clip_dim=encoder.dim)
        except ModelUnavailable as exc:
            if opts.captions:
                raise
            log.info("%s; searching without the stored captions' words", exc)
            captioner = None
        if captioner is not None:
            service = CaptionService(home, captioner, encoder.key)
        elif opts.captions:
            _notice("captions are off (PIXSEARCH_CAPTIONER=none)")
    searcher = Searcher(home, encoder, service)
    model = searcher.model()  # "index first", rather than "no results"
    given: dict[str, Any] = dict(opts.filters)
    for key in ("taken_after", "taken_before"):
        if key in given:
            given[key] = date.fromisoformat(given[key])
    filters = Filters(**given)
    common: dict[str, Any] = {
        "k": opts.k,
        "negative": opts.negative,
        "filters": filters,
        "cutoff": opts.cutoff,
        "captions": opts.captions and service is not None,
    }
    if text is not None:
        query = Query(text=text, rerank="standard", **common)
    else:
        assert image is not None
        vec, _ = searcher.vector_of(image, model)
        query = Query(image_vector=vec, rerank="none", **common)
    result = searcher.search(query)
    _notice(result.notice)
    if result.cut_off:
        _notice("no photo matches this well; --no-cutoff shows the closest ones")
    return result.hits


def _notice(text: object) -> None:
    if text:
        typer.echo(f"pixsearch: {text}", err=True)


def _print(hits: list[Hit], as_json: bool, captions: bool) -> None:
    from api.cli_support import print_hits

    print_hits(hits, as_json, captions=captions)


def server_of(cfg: Settings) -> ServerInfo | None:
    """The home's running server, if any (for `status`)."""
    from api.discovery import find_server

    return find_server(cfg.home)
