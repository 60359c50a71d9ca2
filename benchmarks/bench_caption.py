"""Captioning cost per image on CPU: the first time, on demand, then cached.

The default captioner is ``nlpconnect/vit-gpt2-image-captioning`` (a transformers
``VisionEncoderDecoderModel``: ViT-base/16 at 224 px encoder, GPT-2 base decoder with
cross-attention, 50,257-token vocabulary). Benchmarks never download weights, so this one
builds a model of exactly that architecture with seeded random weights (same compute), a
GPT-2-style byte-level BPE tokenizer trained here on a few sentences (the model keeps its
50,257-row output layer; ids the small tokenizer does not know decode to nothing) and a
``ViTImageProcessor`` like the real one's (224x224, mean/std 0.5), saves them with
``save_pretrained`` (cached between runs, never inside the repository) and loads the folder
through pixsearch's own ``load_captioner``, i.e. ``VitGpt2Captioner`` with its own
generation settings (beam search, its ``max_new_tokens`` cap).

Random weights almost never emit the end-of-text token, so every caption runs to the
captioner's length cap: the figures are the worst case, an upper bound at that cap (a
trained model stops after about 10 tokens). The mean number of generated tokens per
caption is reported so the figures can be scaled.

The first ``--count`` photos of ``--photos`` (default: 50 of the ImageNet samples in
/work/shared/photos/imagenet-1k, read where they are) are indexed into a temporary home
with pixsearch's normal ``Indexer`` and the tests' tiny CLIP (tests/assets; CLIP speed is
not measured here, and its 64-d embeddings are what the tiny ClipCap captioner reads).
Then, for each captioner, through pixsearch's own code paths:

- ``first time``: ``caption_missing`` over every image, what ``pixsearch index --captions``
  runs (decode each file, preprocess, generate, store), with pixsearch's batch size;
- ``on demand``: ``CaptionService.for_hits`` on a page of 20 hits that have no caption
  yet, what ``POST /search`` with ``"captions": true`` pays (their stored captions are
  deleted first);
- ``cached``: the same page again, now stored (median of several calls), and
  ``caption_missing`` again with nothing left to do.

The captioner is loaded and warmed up (one image, not stored) before anything is timed;
load and warm-up times are reported separately. For the ViT-GPT-2 captioner the time of
``caption`` is split into reading + decoding + preprocessing and ``generate`` (measured by
wrapping the captioner's methods; skipped if they are not there). The tiny ClipCap
captioner (tests/assets: 2-layer GPT-2 of width 128, greedy, from stored embeddings, no
file opened) is timed the same way for comparison.

    HF_HUB_OFFLINE=1 uv run python benchmarks/bench_caption.py              # table
    HF_HUB_OFFLINE=1 uv run python benchmarks/bench_caption.py --json
    HF_HUB_OFFLINE=1 uv run python benchmarks/bench_caption.py --count 20 --skip-clipcap

About 2.5 minutes on 2 cores with the defaults (the first run also builds and saves the
1 GB random-weights model, about 10 s more). Figures on a shared machine are noisy: the load
average at start and end is printed; compare figures from one run.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common

DEFAULT_PHOTOS = Path("/work/shared/photos/imagenet-1k")
#: The random-weights ViT-GPT-2 folder, cached between runs (bump the suffix if the build changes).
DEFAULT_CAPTIONER_DIR = common.DEFAULT_CHECKPOINT_DIR / "vit-gpt2-base-random-seed0-v2"
PAGE = 20
HEADER = ["captioner", "phase", "images", "ms/call", "ms/image", "images/s"]


# -- the models ------------------------------------------------------------------------------
def build_vit_gpt2(folder: Path) -> Path:
    """A VisionEncoderDecoder shaped like nlpconnect/vit-gpt2-image-captioning, random
    weights (seed 0), with a locally trained byte-level BPE tokenizer and a ViT image
    processor, saved with save_pretrained into `folder` (reused when already complete)."""
    from tests.fakes import build_vit_gpt2 as build

    done = folder / "COMPLETE"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    # google/vit-base-patch16-224-in21k (224 px, patch 16, 768 wide, 12 layers and heads,
    # MLP 3072) and gpt2 base (12 layers, 768 wide, 12 heads, 1024 positions, 50,257 tokens),
    # with cross-attention, as in the VisionEncoderDecoder.
    build(
        folder,
        image_size=224,
        patch_size=16,
        width=768,
        layers=12,
        heads=12,
        vocab_size=50257,
        positions=1024,
    )
    done.write_text("ok\n")
    return folder


def describe_vit_gpt2(captioner: Any) -> dict[str, Any]:
    """Architecture and generation settings of the loaded captioner (what was measured)."""
    out: dict[str, Any] = {}
    model = getattr(captioner, "_model", None)
    if model is not None:
        enc, dec = model.config.encoder, model.config.decoder
        out["encoder"] = (
            f"ViT {enc.image_size}px/{enc.patch_size}, {enc.hidden_size} wide, "
            f"{enc.num_hidden_layers} layers, {enc.num_attention_heads} heads"
        )
        out["decoder"] = (
            f"GPT-2 {dec.n_layer} layers, {dec.n_embd} wide, {dec.n_head} heads, "
            f"vocab {dec.vocab_size}, cross-attention {dec.add_cross_attention}"
        )
        out["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        out["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    for attr in ("num_beams", "max_new_tokens"):
        if hasattr(captioner, attr):
            out[attr] = getattr(captioner, attr)
    return out


class Probe:
    """Wraps a ViT-GPT-2 captioner's `_pixels` and its model's `generate` to split the time
    and count generated tokens (does nothing if those attributes are not there)."""

    def __init__(self, captioner: Any) -> None:
        self.pixels_s = 0.0
        self.generate_s = 0.0
        self.images = 0
        self.tokens: list[int] = []
        self.active = hasattr(captioner, "_pixels") and hasattr(captioner, "_model")
        if not self.active:
            return
        pixels, model = captioner._pixels, captioner._model
        generate = model.generate
        eos = getattr(getattr(captioner, "_tokenizer", None), "eos_token_id", None)

        def timed_pixels(paths: Sequence[str]) -> Any:
            t0 = time.perf_counter()
            try:
                return pixels(paths)
            finally:
                self.pixels_s += time.perf_counter() - t0

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                out = generate(*args, **kwargs)
            finally:
                self.generate_s += time.perf_counter() - t0
            seqs = getattr(out, "sequences", out)
            self.images += int(seqs.shape[0])
            for row in seqs[:, 1:].tolist():  # position 0 is the decoder start token
                self.tokens.append(row.index(eos) + 1 if eos in row else len(row))
            return out

        captioner._pixels = timed_pixels
        model.generate = timed_generate

    def reset(self) -> None:
        self.pixels_s = self.generate_s = 0.0
        self.images = 0
        self.tokens = []

    def summary(self) -> dict[str, Any]:
        if not self.active or not self.images:
            return {}
        return {
            "pixels_ms_per_image": 1000 * self.pixels_s / self.images,
            "generate_ms_per_image": 1000 * self.generate_s / self.images,
            "mean_generated_tokens": statistics.fmean(self.tokens),
            "max_generated_tokens": max(self.tokens),
        }


# -- the home --------------------------------------------------------------------------------
def list_photos(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted."""
    from indexer.imageio import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def index_photos(photos: list[Path], work: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Index `photos` (symlinked, read in place) into a new home with the tiny CLIP."""
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from indexer.pipeline import Indexer
    from indexer.settings import Settings
    from tests.assets.tiny_models import materialize_tiny_clip

    folder = work / "photos"
    folder.mkdir()
    for p in photos:
        (folder / p.name).symlink_to(p)
    json_path, ckpt = materialize_tiny_clip(work / "clip")
    settings = Settings(
        home=work / "home", model=str(json_path), pretrained=str(ckpt), device="cpu"
    )
    home = Home(settings)
    encoder = get_encoder(settings)
    t0 = time.perf_counter()
    report = Indexer(home, encoder).run([folder])
    seconds = time.perf_counter() - t0
    if report.failed or not report.added:
        raise SystemExit(f"indexing failed: {report.failed[:3]}")
    model = home.model_row(encoder.key)
    assert model is not None
    return home, model, {"images": report.added, "seconds": seconds}


def page_of_hits(home: Any, model: Any, count: int) -> tuple[list[Any], Any]:
    """`count` hits and their stored vectors, built as `Searcher.search` builds them."""
    import numpy as np

    from search.query import Hit

    ids, _ = home.stored_vectors(model.id, model.dim)
    chosen = np.sort(np.asarray(ids))[:count]
    rows = home.images_by_id([int(i) for i in chosen])
    hits = [
        Hit(int(i), r.path, 0.0, r.width, r.height, r.taken_at, r.content_hash)
        for i in chosen
        if (r := rows.get(int(i))) is not None
    ]
    _, vecs = home.stored_vectors(model.id, model.dim, np.asarray([h.id for h in hits]))
    return hits, vecs


def forget_captions(home: Any, store: Any, hashes: Sequence[str]) -> None:
    """Delete these contents' stored captions of this store's captioner."""
    from sqlalchemy import delete

    from indexer.db import Caption

    with home.session() as s, s.begin():
        s.execute(
            delete(Caption).where(
                Caption.captioner == store.key, Caption.content_hash.in_(list(hashes))
            )
        )


# -- the measurements ------------------------------------------------------------------------
def timeit(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(label: str, captioner: Any, home: Any, model: Any, probe: Probe | None,
            cached_repeat: int) -> dict[str, Any]:  # fmt: skip
    """First time, on demand and cached, through pixsearch's own code paths."""
    from indexer.captioners.base import CaptionStore, caption_missing
    from search.captions import CaptionService

    param = inspect.signature(caption_missing).parameters.get("batch")
    batch = param.default if param is not None else "?"
    phases: list[dict[str, Any]] = []
    detail: dict[str, Any] = {}
    # captions from vectors are stored per CLIP model: the one that indexed this home
    store = CaptionStore(home, captioner, model.name)

    # first time: what `pixsearch index --captions` runs
    common.log(f"{label}: caption_missing over the collection")
    if probe:
        probe.reset()
    seconds, made = timeit(lambda: caption_missing(home, store, model.id, model.dim))
    phases.append(_phase(f"first time: caption_missing (batch {batch})", made, seconds))
    if probe:
        detail["first_time"] = probe.summary()

    # on demand: a page of hits with no stored caption, what POST /search captions:true pays
    hits, vecs = page_of_hits(home, model, PAGE)
    service = CaptionService(home, captioner, model.name)
    forget_captions(home, store, [h.content_hash for h in hits])
    common.log(f"{label}: for_hits on a page of {len(hits)} uncaptioned hits")
    if probe:
        probe.reset()
    seconds, out = timeit(lambda: service.for_hits(hits, vecs))
    if any(h.caption is None for h in out):
        raise SystemExit(f"{label}: for_hits left hits without a caption")
    phases.append(_phase(f"on demand: for_hits, page of {len(hits)}", len(hits), seconds))
    if probe:
        detail["on_demand"] = probe.summary()
    detail["sample_captions"] = [h.caption for h in out[:3]]

    # cached: the same page again, and caption_missing with nothing left to do
    times = []
    for _ in range(cached_repeat):
        seconds, again = timeit(lambda: service.for_hits(hits, vecs))
        times.append(seconds)
        if [h.caption for h in again] != [h.caption for h in out]:
            raise SystemExit(f"{label}: the cached captions differ")
    name = f"cached: for_hits, page of {len(hits)} (median of {len(times)})"
    phases.append(_phase(name, len(hits), statistics.median(times)))
    seconds, made = timeit(lambda: caption_missing(home, store, model.id, model.dim))
    if made:
        raise SystemExit(f"{label}: caption_missing found {made} uncaptioned images")
    phases.append(_phase("cached: caption_missing, nothing to do", 0, seconds))
    for p in phases:
        p["captioner"] = label
    return {"captioner": label, "batch": batch, "phases": phases, **detail}


def _phase(name: str, images: int, seconds: float) -> dict[str, Any]:
    """One timed call (one caption_missing run, or one page of hits)."""
    return {
        "phase": name,
        "images": images,
        "seconds": seconds,
        "ms_per_call": 1000 * seconds,
        "ms_per_image": 1000 * seconds / images if images else None,
        "images_per_second": images / seconds if images else None,
    }


def load_and_warm(spec: str, path: str, embeddings: Any) -> tuple[Any, float, float]:
    """`load_captioner(spec)`, then one caption (not stored); returns it and both times."""
    from indexer.captioners.base import load_captioner

    load_s, captioner = timeit(lambda: load_captioner(spec))
    if captioner is None:
        raise SystemExit(f"load_captioner({spec!r}) gave no captioner")
    warm_s, _ = timeit(lambda: captioner.caption([path], embeddings[:1]))
    return captioner, load_s, warm_s


# -- the driver -------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--count", type=int, default=50, help="photos to index and caption")
    parser.add_argument(
        "--captioner-dir", type=Path, default=DEFAULT_CAPTIONER_DIR,
        help="where the random-weights ViT-GPT-2 is saved (reused when complete)",
    )  # fmt: skip
    parser.add_argument("--skip-clipcap", action="store_true", help="no tiny ClipCap run")
    parser.add_argument("--cached-repeat", type=int, default=5, help="calls of the cached page")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.count < PAGE:
        raise SystemExit(f"--count must be at least {PAGE} (one page of hits)")

    import indexer.encoder  # noqa: F401  (sets pixsearch's OpenMP settings before torch loads)

    machine_start = common.machine()
    photos = list_photos(args.photos)[: args.count]
    if len(photos) < PAGE:
        raise SystemExit(f"fewer than {PAGE} photos in {args.photos}")

    common.log(f"building the random-weights ViT-GPT-2 in {args.captioner_dir} (if not there)")
    build_s, folder = timeit(lambda: build_vit_gpt2(args.captioner_dir))
    work = Path(tempfile.mkdtemp(prefix="pixsearch-bench-caption-"))
    results = []
    try:
        common.log(f"indexing {len(photos)} photos from {args.photos} with the tiny CLIP")
        home, model, indexed = index_photos(photos, work)
        hits, vecs = page_of_hits(home, model, 1)

        common.log("loading the ViT-GPT-2 captioner through load_captioner")
        vit, load_s, warm_s = load_and_warm(str(folder), hits[0].path, vecs)
        probe = Probe(vit)
        entry = measure("vit-gpt2 base (random weights)", vit, home, model, probe,
                        args.cached_repeat)  # fmt: skip
        entry.update(describe_vit_gpt2(vit), name=vit.name, load_s=load_s, warm_up_s=warm_s,
                     build_s=build_s)  # fmt: skip
        results.append(entry)
        del vit, probe

        if not args.skip_clipcap:
            from tests.assets.tiny_models import materialize_tiny_captioner

            cap_dir = materialize_tiny_captioner(work / "tiny-clipcap")
            common.log("loading the tiny ClipCap captioner through load_captioner")
            cap, load_s, warm_s = load_and_warm(str(cap_dir), hits[0].path, vecs)
            entry = measure("clipcap tiny (tests/assets)", cap, home, model, None,
                            args.cached_repeat)  # fmt: skip
            entry.update(name=cap.name, load_s=load_s, warm_up_s=warm_s)
            results.append(entry)
        home.engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    machine_end = common.machine()
    payload = {
        "benchmark": "caption",
        "machine": machine_start,
        "loadavg_start": machine_start["loadavg"],
        "loadavg_end": machine_end["loadavg"],
        "photos": str(args.photos),
        "indexed": indexed,
        "results": results,
    }
    if args.json:
        common.dump_json(payload)
        return
    m = machine_start
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} "
        f"threads), load average {machine_start['loadavg']:.1f} at start, "
        f"{machine_end['loadavg']:.1f} at end; {indexed['images']} photos from {args.photos}"
    )
    rows = []
    for r in results:
        for p in r["phases"]:
            rows.append(
                [
                    r["captioner"],
                    p["phase"],
                    p["images"],
                    p["ms_per_call"],
                    "-" if p["ms_per_image"] is None else p["ms_per_image"],
                    "-" if p["images_per_second"] is None else p["images_per_second"],
                ]
            )
    common.print_table("Captioning on CPU (pixsearch's own code paths)", HEADER, rows)
    for r in results:
        print(f"\n{r['captioner']}: {r['name']}")
        if "encoder" in r:
            print(f"  {r['encoder']}; {r['decoder']}; {r['parameters_m']:.0f} M parameters, "
                  f"{r['dtype']}")  # fmt: skip
            print(f"  generation: {r.get('num_beams', '?')} beams, at most "
                  f"{r.get('max_new_tokens', '?')} new tokens")  # fmt: skip
        line = f"  load {r['load_s']:.1f} s, warm-up caption {r['warm_up_s']:.2f} s"
        if "build_s" in r:
            line += f", build + save (or reuse) {r['build_s']:.1f} s"
        print(line)
        for key in ("first_time", "on_demand"):
            s = r.get(key) or {}
            if s:
                print(
                    f"  {key.replace('_', ' ')}: read + decode + preprocess "
                    f"{s['pixels_ms_per_image']:.0f} ms/image, generate "
                    f"{s['generate_ms_per_image']:.0f} ms/image, "
                    f"{s['mean_generated_tokens']:.1f} generated tokens per caption "
                    f"(max {s['max_generated_tokens']})"
                )
        print(f"  sample captions: {r['sample_captions']}")
    if any("encoder" in r for r in results):
        print(
            "\nRandom weights: captions run to the length cap (the worst case; a trained model "
            "stops earlier), so the ViT-GPT-2 figures are an upper bound at that cap."
        )


if __name__ == "__main__":
    main()
