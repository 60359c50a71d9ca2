"""Retrieval quality on a captioned data set: recall@k both ways, per rerank setting."""

from __future__ import annotations

import csv
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.captioners.base import CaptionStore, load_captioner
from indexer.encoder import ClipEncoder
from indexer.errors import InvalidInput, ModelUnavailable
from indexer.home import Home
from indexer.lookups import ids_by_path
from indexer.pipeline import Indexer
from indexer.settings import Settings
from search.captions import CaptionService
from search.engine import Searcher
from search.query import Query, RerankMode

log = logging.getLogger(__name__)

KS = (1, 5, 10)


@dataclass
class Dataset:
    """Images and their reference captions (several per image allowed)."""

    root: Path
    captions: dict[Path, list[str]] = field(default_factory=dict)

    @property
    def images(self) -> list[Path]:
        return list(self.captions)


def load_dataset(path: Path) -> Dataset:
    """A folder with `captions.csv` (path,caption), or a COCO-captions layout."""
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise InvalidInput(f"{path} is not a folder")
    ds = Dataset(path)
    if (path / "captions.csv").is_file():
        with open(path / "captions.csv", newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                raise InvalidInput(f"{path / 'captions.csv'} needs the columns path,caption")
            for row in reader:
                ds.captions.setdefault((path / row["path"]).resolve(), []).append(row["caption"])
    else:
        files = sorted(path.glob("captions_*.json")) + sorted(path.glob("*/captions_*.json"))
        if not files:
            raise InvalidInput(f"{path} has neither captions.csv nor a COCO captions_*.json")
        coco = json.loads(files[0].read_text(encoding="utf-8"))
        split = files[0].stem.removeprefix("captions_")
        folders = [path / "images", path / split, path / "images" / split, path]
        names = {img["id"]: img["file_name"] for img in coco["images"]}
        for ann in coco["annotations"]:
            name = names.get(ann["image_id"])
            where = next((f / name for f in folders if name and (f / name).is_file()), None)
            if where is not None:
                ds.captions.setdefault(where.resolve(), []).append(ann["caption"])
    missing = [p for p in ds.images if not p.is_file()]
    for p in missing:
        del ds.captions[p]
    if not ds.captions:
        raise InvalidInput(f"no captioned images found in {path}")
    return ds


def _recalls(ranks: list[int]) -> dict[str, float]:
    r = np.asarray(ranks)
    return {f"recall@{k}": round(float(np.mean((r >= 0) & (r < k))), 4) for k in KS}


def _tokens(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@contextmanager
def _home(settings: Settings, home: Path | None) -> Iterator[Settings]:
    if home is not None:
        yield settings.model_copy(update={"home": home, "database_url": None})
        return
    with tempfile.TemporaryDirectory(prefix="pixsearch-eval-") as tmp:
        yield settings.model_copy(update={"home": Path(tmp), "database_url": None})


def load_absent(dataset: Path, absent: Path | None) -> list[str]:
    """Queries about things the data set does not show: `absent` (one per line), else the
    data set's own `absent.txt` if it has one, else none."""
    path = absent or (dataset.expanduser() / "absent.txt")
    if absent is None and not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    return [q.strip() for q in lines if q.strip() and not q.lstrip().startswith("#")]


def evaluate(
    dataset: Path,
    settings: Settings,
    encoder: ClipEncoder,
    home: Path | None = None,
    captions: bool = True,
    absent: Path | None = None,
) -> dict[str, object]:
    """Index the data set's images, answer every caption as a query, report recall@k.

    Also what the automatic cut-off does with the defaults a user gets: recall@k with it,
    how many hits "more like this" keeps, and how many queries about absent things (see
    `load_absent`) it answers empty or with at most 3 photos.
    """
    started = time.perf_counter()
    ds = load_dataset(dataset)
    absent_queries = load_absent(dataset, absent)
    with _home(settings, home) as cfg:
        h = Home(cfg)
        report = Indexer(h, encoder).run([str(p) for p in ds.images])
        if report.failed:
            log.warning("%d images could not be indexed", len(report.failed))
        ids = {Path(p): i for p, i in ids_by_path(h).items()}
        notice = None
        try:
            captioner = (
                load_captioner(cfg.captioner, clip_model=encoder.key, clip_dim=encoder.dim)
                if captions
                else None
            )
        except ModelUnavailable as exc:  # no network: retrieval is still worth reporting
            captioner, notice = None, f"captions skipped: {exc}"
            log.info("%s", notice)
        service = CaptionService(h, captioner, encoder.key) if captioner is not None else None
        searcher = Searcher(h, encoder, service)
        model = searcher.model()
        queries = [(ids[p], text) for p, texts in ds.captions.items() if p in ids for text in texts]
        searcher.prime_texts([t for _, t in queries])
        modes: list[RerankMode] = ["none", "standard"]
        if service is not None:
            modes.append("generative")
        by_mode: dict[str, dict[str, float]] = {}
        for mode in modes:
            ranks = []
            for image_id, text in queries:
                hits = searcher.search(Query(text=text, k=max(KS), rerank=mode, cutoff=False))
                got = [hit.id for hit in hits.hits]
                ranks.append(got.index(image_id) if image_id in got else -1)
            by_mode[mode] = _recalls(ranks)
        cut = _cutoff_report(searcher, queries, absent_queries)
        # Image to text: every image against every caption, in the same space.
        image_ids = sorted({i for i, _ in queries})
        found, img_vecs = h.stored_vectors(model.id, model.dim, np.asarray(image_ids))
        text_vecs = np.stack([searcher.embed_text(t) for _, t in queries])
        owner = np.asarray([i for i, _ in queries])
        sims = img_vecs @ text_vecs.T
        i2t = []
        for row, image_id in zip(sims, found, strict=True):
            order = owner[np.argsort(-row, kind="stable")]
            hit = np.flatnonzero(order == image_id)
            i2t.append(int(hit[0]) if len(hit) else -1)
        result: dict[str, object] = {
            "text_to_image": by_mode["standard"],
            "image_to_text": _recalls(i2t),
            "by_rerank": {m: {"text_to_image": v} for m, v in by_mode.items()},
            "cutoff": cut,
            "images": len(image_ids),
            "queries": len(queries),
        }
        if notice is not None:
            result["notice"] = notice
        if service is not None:
            result["captions"] = _caption_scores(h, service, model.id, model.dim, ds, ids)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _cutoff_report(
    searcher: Searcher, queries: list[tuple[int, str]], absent: list[str]
) -> dict[str, object]:
    """The automatic cut-off with the defaults (standard rerank, cut-off on): recall@k of the
    captions, hits kept by "more like this", and absent-content queries answered (nearly)
    empty."""
    ranks = []
    for image_id, text in queries:
        got = [h.id for h in searcher.search(Query(text=text, k=max(KS))).hits]
        ranks.append(got.index(image_id) if image_id in got else -1)
    similar = [
        len(searcher.search(Query(image_id=i, k=50)).hits) for i in sorted({i for i, _ in queries})
    ]
    report: dict[str, object] = {
        "text_to_image": _recalls(ranks),
        "more_like_this_hits": {
            "k": 50,
            "median": float(np.median(similar)) if similar else 0.0,
            "min": int(min(similar, default=0)),
        },
    }
    if absent:
        searcher.prime_texts(absent)
        counts = [len(searcher.search(Query(text=t, k=20)).hits) for t in absent]
        report["absent"] = {
            "queries": len(absent),
            "empty": round(float(np.mean([c == 0 for c in counts])), 4),
            "at_most_3": round(float(np.mean([c <= 3 for c in counts])), 4),
            "hits": dict(zip(absent, counts, strict=True)),
        }
    return report


def _caption_scores(
    h: Home, service: CaptionService, model_id: int, dim: int, ds: Dataset, ids: dict[Path, int]
) -> dict[str, object]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    paths = [p for p in ds.images if p in ids]
    found, vecs = h.stored_vectors(model_id, dim, np.asarray([ids[p] for p in paths]))
    rows = h.images_by_id([int(i) for i in found])
    store: CaptionStore = service.store
    texts = store.ensure([(rows[int(i)].content_hash, rows[int(i)].path) for i in found], vecs)
    by_id = {int(i): p for i, p in zip([ids[p] for p in paths], paths, strict=True)}
    gts = {int(i): [_tokens(c) for c in ds.captions[by_id[int(i)]]] for i in found}
    res = {int(i): [_tokens(texts.get(rows[int(i)].content_hash, "")) or "empty"] for i in found}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {
        "captioner": service.name,
        "bleu@4": round(float(bleu[3]), 4),
        "cider": round(float(cider), 4),
        "images": len(found),
    }
