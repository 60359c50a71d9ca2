"""`pixsearch status`, `export` and `eval`: describe a home, write its embeddings out, and
measure retrieval quality."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from api import cli_search
from api.cli_common import JsonFlag, settings

log = logging.getLogger(__name__)


def _searcher() -> Any:
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from search.engine import Searcher

    cfg = settings()
    return Searcher(Home(cfg), get_encoder(cfg))


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
