#!/usr/bin/env python3
"""Train the tiny open_clip model used by the tests (CPU only; 60 epochs, ~7 min on 2 busy cores).

The model is an ordinary open_clip ``CLIP`` with a small custom config: 64 px images into
timm's ``test_convnext`` (a 0.2 M-parameter ConvNeXt that timm ships for its own tests;
global max pooling) as the image tower, the standard open_clip text transformer (2 layers,
width 96) over open_clip's default 49408-token vocabulary, 64-d embeddings. It is trained
contrastively on the synthetic shapes dataset (``make_synthetic_dataset.py``, seed 0), with
open_clip's own tokenizer and preprocessing transforms. Each picture is paired with its
canonical caption, its paraphrase or a partial description ("a red circle"); the loss is
open_clip's symmetric CLIP loss with multiple positives (every picture that a partial
description fits counts as a positive), which equals ``open_clip.loss.ClipLoss`` whenever
each text fits only its own picture.

(A tiny ViT or ModifiedResNet tower learns colours quickly but shapes only very slowly on
CPU budgets; the convolutional tower with max pooling plus "hard negative" batches learns
shapes within the budget.)

Token-embedding rows of tokens that never occur in the captions are zeroed (they got no
gradient anyway) and the weights are stored float16, row-sparse, in an ``.npz`` of a few
hundred KB. ``tests/assets/tiny_models.py:materialize_tiny_clip`` turns them back into the
plain ``.pt`` checkpoint that ``open_clip.create_model_and_transforms`` loads.

Usage (writes ``tests/assets/tiny_clip/``; ``--threads 1`` is what the assets were built with
and is faster when the machine is busy)::

    HF_HUB_OFFLINE=1 uv run python scripts/train_tiny_clip.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from indexer import shapes  # noqa: E402
from indexer.captioners.clipcap import pack_state_dict  # noqa: E402

MODEL_NAME = "pixsearch-tiny-clip"
#: Shares of canonical captions, paraphrases and partial descriptions in training.
TEXT_MIX = (0.4, 0.3, 0.3)
#: Partial queries evaluated on the held-out set.
PARTIAL_EVAL = {
    "colour_shape": "a {colour} {shape}",
    "size_shape": "a {size} {shape}",
    "shape_bg": "a {shape} on a {bg} background",
}
WEIGHTS_NAME = "tiny_clip_weights.npz"
MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 64,
        "timm_model_name": "test_convnext",
        "timm_model_pretrained": False,
        "timm_pool": "max",
        "timm_proj": "linear",
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 96,
        "heads": 4,
        "layers": 2,
        "mlp_ratio": 2.0,
    },
}


def encode_text_short(model: Any, tokens: Any) -> Any:
    """``model.encode_text`` on the first L token positions only (exactly equivalent).

    open_clip's text tower is causal and pools at the end-of-text token, so positions after
    the longest caption never influence the output; skipping them makes training ~4x cheaper.
    """
    from open_clip.transformer import text_global_pool

    n = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type)
    return x @ model.text_projection


def load_images(data_dir: Path, paths: list[str], preprocess: Any) -> Any:
    """Preprocessed image tensors (n, 3, S, S), via open_clip's own transform."""
    import torch
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(data_dir / p) as img:
            out.append(preprocess(img.convert("RGB")))
    return torch.stack(out)


def attribute_ids(sample: Any) -> list[int]:
    """A picture's attributes as integers, in ``shapes.FIELDS`` order."""
    values = {
        "shape": shapes.SHAPES,
        "colour": list(shapes.COLOURS),
        "size": shapes.SIZES,
        "background": list(shapes.COLOURS),
        "position": list(shapes.POSITIONS),
    }
    return [values[f].index(getattr(sample, f)) for f in shapes.FIELDS.values()]


def multi_positive_clip_loss(img_f: Any, txt_f: Any, scale: Any, positives: Any) -> Any:
    """Symmetric CLIP loss with soft targets spread evenly over ``positives`` (bool, n x n).

    ``positives[i, j]``: text j describes image i. With the identity this is ClipLoss.
    """
    import torch.nn.functional as F

    logits = scale * img_f @ txt_f.T
    target = positives.float()
    i2t = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (i2t + t2i) / 2


def recall_at_1(img_f: Any, txt_f: Any) -> float:
    """text->image recall@1, text i belonging to image i."""
    import torch

    sims = txt_f @ img_f.T
    return float((sims.argmax(dim=1) == torch.arange(len(txt_f))).float().mean())


def evaluate(
    model: Any, tokenizer: Any, preprocess: Any, seed: int, count: int, dtype: Any = None
) -> dict[str, float]:
    """Recall@1 on a held-out dataset (every picture uniquely described by its caption)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        data = shapes.make_dataset(tmp, seed, count)
        samples = shapes.generate_samples(seed, count)
        images = load_images(data, [s.path for s in samples], preprocess)
    dtype = dtype or torch.float32
    model = model.to(dtype)
    with torch.no_grad():
        img_f = model.encode_image(images.to(dtype), normalize=True).float()
        res = {}
        for k, name in enumerate(("canonical", "paraphrase")):
            toks = tokenizer([s.captions[k] for s in samples])
            txt_f = model.encode_text(toks, normalize=True).float()
            res[f"t2i_r1_{name}"] = recall_at_1(img_f, txt_f)
            res[f"i2t_r1_{name}"] = recall_at_1(txt_f, img_f)
        # zero-shot shape: the canonical caption with each of the shapes, best one right?
        hits = 0
        for s, f in zip(samples, img_f, strict=True):
            cands = [s.captions[0].replace(f" {s.shape} ", f" {x} ") for x in shapes.SHAPES]
            t = model.encode_text(tokenizer(cands), normalize=True).float()
            hits += shapes.SHAPES[int((t @ f).argmax())] == s.shape
        res["zero_shot_shape"] = hits / len(samples)
        # partial queries: every distinct description present; is the top-1 picture a match,
        # and what fraction of the top-R are (R = number of matching pictures)?
        for key, template in PARTIAL_EVAL.items():
            names = shapes.template_fields(template)
            queries: dict[str, list[int]] = {}
            for i, s in enumerate(samples):
                queries.setdefault(s.describe(template), []).append(i)
            t = model.encode_text(tokenizer(list(queries)), normalize=True).float()
            order = (t @ img_f.T).argsort(dim=1, descending=True)
            top1 = rprec = 0.0
            for q, (_, members) in enumerate(queries.items()):
                ranked = order[q].tolist()
                ok = [
                    all(getattr(samples[j], f) == getattr(samples[members[0]], f) for f in names)
                    for j in ranked[: len(members)]
                ]
                top1 += ok[0]
                rprec += sum(ok) / len(members)
            res[f"{key}_top1"] = top1 / len(queries)
            res[f"{key}_rprec"] = rprec / len(queries)
    model.float()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "assets" / "tiny_clip")
    ap.add_argument("--seed", type=int, default=0, help="training dataset + init seed")
    ap.add_argument("--count", type=int, default=3360, help="training pictures")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=140)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-seed", type=int, default=1234)
    ap.add_argument("--eval-count", type=int, default=200)
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)"
    )
    args = ap.parse_args()

    import open_clip
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    args.out.mkdir(parents=True, exist_ok=True)
    config_path = args.out / f"{MODEL_NAME}.json"
    config_path.write_text(json.dumps(MODEL_CONFIG, indent=2) + "\n", encoding="utf-8")
    open_clip.add_model_config(config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)

    # --- data
    with tempfile.TemporaryDirectory() as tmp:
        data = shapes.make_dataset(tmp, args.seed, args.count)
        samples = shapes.generate_samples(args.seed, args.count)
        images = load_images(data, [s.path for s in samples], preprocess)
    # Texts per picture: its two captions, then every partial template; with, for each, which
    # attributes it names (so we know which other pictures it also describes).
    fields = list(shapes.FIELDS.values())
    attrs = torch.tensor([attribute_ids(s) for s in samples])
    texts, named = [], []
    for s in samples:
        templates = [*s.templates, *shapes.PARTIAL_TEMPLATES]
        texts.append([s.describe(t) for t in templates])
        named.append([[f in shapes.template_fields(t) for f in fields] for t in templates])
    n_texts = len(texts[0])
    tokens = tokenizer([t for row in texts for t in row]).view(len(samples), n_texts, -1)
    named_t = torch.tensor(named)  # (n, n_texts, n_fields)
    length = int((tokens != 0).sum(dim=-1).max())
    tokens = tokens[..., :length]
    print(
        f"data: {len(samples)} images {tuple(images.shape[1:])}, token length {length}, "
        f"{time.perf_counter() - t0:.1f}s"
    )

    # Check the short text path matches open_clip's own encode_text.
    with torch.no_grad():
        full = model.encode_text(tokenizer(texts[0]))
        short = encode_text_short(model, tokens[0])
        assert torch.allclose(full, short, atol=1e-5), "encode_text_short mismatch"

    # --- batches. Each 560-block of the dataset holds every (shape, colour, size, background)
    # combination once. A batch is made of whole groups of one block sharing (colour,
    # background): no two pictures of a batch share a caption (no false negatives), and every
    # picture meets all its shape and size variants in its batch (hard negatives), which is
    # what teaches a tiny model shapes quickly. Colours and backgrounds vary across groups.
    block = len(shapes.COMBOS)
    group_size = len(shapes.SHAPES) * len(shapes.SIZES)
    assert args.count % block == 0 and args.batch % group_size == 0
    groups: list[list[int]] = []
    for b0 in range(0, args.count, block):
        by_key: dict[tuple[str, str], list[int]] = {}
        for i in range(b0, b0 + block):
            by_key.setdefault((samples[i].colour, samples[i].background), []).append(i)
        groups += list(by_key.values())
    per_batch = args.batch // group_size

    steps_per_epoch = math.ceil(len(groups) / per_batch)
    total = steps_per_epoch * args.epochs
    warmup = max(1, total // 20)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))),
    )
    model.train()
    for epoch in range(args.epochs):
        order = rng.permutation(len(groups))
        batches = [
            np.concatenate([groups[g] for g in order[i : i + per_batch]])
            for i in range(0, len(groups), per_batch)
        ]
        epoch_loss = 0.0
        for idx in batches:
            idx_t = torch.as_tensor(idx)
            # 40% canonical captions, 30% paraphrases, 30% partial descriptions
            kind = rng.choice(3, size=len(idx), p=TEXT_MIX)
            partial = rng.integers(2, n_texts, size=len(idx))
            which = torch.as_tensor(np.where(kind == 2, partial, kind))
            img_f = model.encode_image(images[idx_t], normalize=True)
            txt = tokens[idx_t, which]
            txt = txt[:, : int((txt != 0).sum(dim=1).max())]
            txt_f = torch.nn.functional.normalize(encode_text_short(model, txt), dim=-1)
            a = attrs[idx_t]
            mask = named_t[idx_t, which]  # (b, fields): attributes text j names
            # positives[i, j]: image i agrees with image j on every attribute text j names
            agree = a[:, None, :] == a[None, :, :]
            positives = (agree | ~mask[None, :, :]).all(dim=-1)
            loss = multi_positive_clip_loss(img_f, txt_f, model.logit_scale.exp(), positives)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            epoch_loss += float(loss.detach())
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {epoch_loss / len(batches):.3f} "
            f"scale {float(model.logit_scale.detach().exp()):.1f} {time.perf_counter() - t0:.0f}s"
        )
    model.eval()

    # --- zero token rows that no caption uses, save float16 row-sparse weights
    vocab_ids = {
        shapes_id for s in tokenizer(shapes.caption_vocabulary()) for shapes_id in s.tolist()
    }
    used = torch.unique(tokens).tolist()
    keep = sorted((set(used) | vocab_ids) - {0})
    with torch.no_grad():
        mask = torch.zeros(model.token_embedding.weight.shape[0], dtype=torch.bool)
        mask[keep] = True
        model.token_embedding.weight[~mask] = 0
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    packed = pack_state_dict(state, sparse_keys=("token_embedding.weight",))
    weights_path = args.out / WEIGHTS_NAME
    np.savez_compressed(weights_path, **packed)
    train_s = time.perf_counter() - t0
    print(
        f"saved {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB), "
        f"{len(keep)} token rows kept, trained in {train_s:.0f}s"
    )

    # --- evaluate exactly as pixsearch loads it: materialise .pt + JSON, register, create
    from tests.assets.tiny_models import materialize_tiny_clip

    with tempfile.TemporaryDirectory() as tmp:
        json_path, ckpt = materialize_tiny_clip(tmp, source_dir=args.out)
        open_clip.add_model_config(json_path)
        loaded, _, pre = open_clip.create_model_and_transforms(json_path.stem, pretrained=str(ckpt))
        loaded.eval()
        tok = open_clip.get_tokenizer(json_path.stem)
        for dtype in (torch.float32, torch.bfloat16):
            res = evaluate(loaded, tok, pre, args.eval_seed, args.eval_count, dtype)
            print(
                f"held-out seed {args.eval_seed} x{args.eval_count} {dtype}: "
                + " ".join(f"{k}={v:.3f}" for k, v in res.items())
            )


if __name__ == "__main__":
    main()
