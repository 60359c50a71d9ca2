#!/usr/bin/env python3
"""Train the tiny ClipCap captioner used by the tests (CPU only; ~3 min on 2 busy cores).

A small MLP maps the L2-normalised image embedding of the tiny CLIP
(``tests/assets/tiny_clip``, see ``train_tiny_clip.py``) to a prefix of GPT-2 input
vectors; a small ``GPT2LMHeadModel`` over open_clip's 49408-token BPE vocabulary then
writes the caption. Training data: the synthetic shapes dataset (seed 0), both captions
of every picture.

Token rows that no caption uses are kept at exactly zero during training (the loss is
computed over the used rows plus the zero rows folded into the normaliser, which is the
same as the full-vocabulary loss), so the saved weights are row-sparse and small.

Usage (writes ``tests/assets/tiny_captioner/``; run after ``train_tiny_clip.py``)::

    HF_HUB_OFFLINE=1 uv run python scripts/train_tiny_captioner.py --threads 1
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from train_tiny_clip import load_images  # noqa: E402

from indexer import shapes  # noqa: E402
from indexer.captioners.clipcap import (  # noqa: E402
    ClipCapCaptioner,
    ClipCapConfig,
    build_model,
    model_state_dict,
    pack_state_dict,
)
from tests.assets.tiny_models import TINY_CLIP_DIR, materialize_tiny_clip  # noqa: E402

PREFIX_LENGTH = 4
GPT2_CONFIG = {
    "vocab_size": 49408,
    "n_positions": 32,
    "n_embd": 128,
    "n_layer": 2,
    "n_head": 4,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}
WEIGHTS_NAME = "clipcap_weights.npz"


def embed_dataset(
    clip_dir: Path, seed: int, count: int, dtype_name: str = "fp32"
) -> tuple[list[Any], np.ndarray, str]:
    """(samples, (n, d) float32 unit-norm image embeddings) of a generated dataset."""
    import open_clip
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    with tempfile.TemporaryDirectory() as tmp:
        json_path, ckpt = materialize_tiny_clip(Path(tmp) / "clip", source_dir=clip_dir)
        open_clip.add_model_config(json_path)
        model, _, preprocess = open_clip.create_model_and_transforms(
            json_path.stem, pretrained=str(ckpt)
        )
        model.eval().to(dtype)
        data = shapes.make_dataset(Path(tmp) / "data", seed, count)
        samples = shapes.generate_samples(seed, count)
        images = load_images(data, [s.path for s in samples], preprocess)
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            feats.append(model.encode_image(images[i : i + 256].to(dtype), normalize=True).float())
    return samples, torch.cat(feats).numpy(), json_path.stem


def caption_accuracy(samples: list[Any], captions: list[str]) -> dict[str, float]:
    """Fractions of captions naming the right attributes."""
    colours = "|".join(shapes.COLOURS)
    shape_words = "|".join(shapes.SHAPES)
    pat = re.compile(rf"\b(small|large)?\s*({colours}) ({shape_words})\b")
    hits = {"colour_shape": 0, "colour": 0, "shape": 0, "size": 0, "background": 0, "exact": 0}
    for s, cap in zip(samples, captions, strict=True):
        m = pat.search(cap)
        if m:
            hits["colour"] += m.group(2) == s.colour
            hits["shape"] += m.group(3) == s.shape
            hits["colour_shape"] += (m.group(2), m.group(3)) == (s.colour, s.shape)
            hits["size"] += m.group(1) == s.size
        rest = cap[m.end() :] if m else cap
        hits["background"] += bool(re.search(rf"\b{s.background}\b", rest))
        hits["exact"] += cap in s.captions
    return {k: v / len(samples) for k, v in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip-dir", type=Path, default=TINY_CLIP_DIR)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "assets" / "tiny_captioner")
    ap.add_argument("--seed", type=int, default=0, help="training dataset + init seed")
    ap.add_argument("--count", type=int, default=3360)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--noise", type=float, default=0.02, help="embedding noise (augmentation)")
    ap.add_argument("--eval-seed", type=int, default=1234)
    ap.add_argument("--eval-count", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from open_clip.tokenizer import SimpleTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    samples, emb, clip_name = embed_dataset(args.clip_dir, args.seed, args.count)
    tokenizer = SimpleTokenizer()
    bos, eos = tokenizer.sot_token_id, tokenizer.eot_token_id
    seqs = [[bos, *tokenizer.encode(c), eos] for s in samples for c in s.captions]
    owner = np.repeat(np.arange(len(samples)), 2)
    length = max(map(len, seqs))
    tokens = torch.full((len(seqs), length), eos, dtype=torch.long)
    mask = torch.zeros((len(seqs), length - 1), dtype=torch.bool)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s) - 1] = True
    vocab_ids = {t for w in shapes.caption_vocabulary() for t in tokenizer.encode(w)}
    active = torch.tensor(sorted(set(tokens.unique().tolist()) | vocab_ids | {bos, eos}))
    n_inactive = GPT2_CONFIG["vocab_size"] - len(active)
    print(
        f"data: {len(samples)} embeddings, {len(seqs)} captions, max {length} tokens, "
        f"{len(active)} active tokens, {time.perf_counter() - t0:.1f}s"
    )

    config = ClipCapConfig(
        clip_model=clip_name,
        clip_embed_dim=int(emb.shape[1]),
        prefix_length=PREFIX_LENGTH,
        mapping_hidden=256,
        gpt2=GPT2_CONFIG,
        bos_token_id=bos,
        eos_token_id=eos,
        max_new_tokens=20,
        weights=WEIGHTS_NAME,
    )
    model = build_model(config)
    wte = model.gpt.transformer.wte.weight
    with torch.no_grad():
        keep = torch.zeros(wte.shape[0], dtype=torch.bool)
        keep[active] = True
        wte[~keep] = 0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(seqs) / args.batch)
    total = steps_per_epoch * args.epochs
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))),
    )
    emb_t = torch.from_numpy(emb)
    log_inactive = math.log(n_inactive)
    model.train()
    for epoch in range(args.epochs):
        perm = rng.permutation(len(seqs))
        total_loss = 0.0
        for i in range(0, len(seqs), args.batch):
            idx = torch.as_tensor(perm[i : i + args.batch])
            x = emb_t[torch.as_tensor(owner[idx.numpy()])]
            x = torch.nn.functional.normalize(x + args.noise * torch.randn_like(x), dim=-1)
            tok = tokens[idx]
            inputs = torch.cat([model.prefix(x), wte[tok[:, :-1]]], dim=1)
            hidden = model.gpt.transformer(inputs_embeds=inputs).last_hidden_state
            hidden = hidden[:, config.prefix_length :]
            logits = hidden @ wte[active].T
            extra = torch.full_like(logits[..., :1], log_inactive)
            lse = torch.logsumexp(torch.cat([logits, extra], dim=-1), dim=-1)
            picked = (hidden * wte[tok[:, 1:]]).sum(dim=-1)
            m = mask[idx]
            loss = ((lse - picked) * m).sum() / m.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {total_loss / len(seqs):.3f} "
            f"{time.perf_counter() - t0:.0f}s"
        )
    model.eval()
    assert float(wte.detach()[~keep].abs().sum()) == 0.0, "inactive token rows changed"

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.npz"):
        old.unlink()
    packed = pack_state_dict(model_state_dict(model), sparse_keys=("gpt.transformer.wte.weight",))
    np.savez_compressed(args.out / WEIGHTS_NAME, **packed)
    config.save(args.out)
    size = (args.out / WEIGHTS_NAME).stat().st_size / 1e6
    print(f"saved {args.out} ({size:.2f} MB), trained in {time.perf_counter() - t0:.0f}s")

    # --- held-out evaluation with the saved folder, through the pixsearch loader
    captioner = ClipCapCaptioner(args.out)
    for dtype_name in ("fp32", "bf16"):
        ev_samples, ev_emb, _ = embed_dataset(
            args.clip_dir, args.eval_seed, args.eval_count, dtype_name
        )
        t1 = time.perf_counter()
        caps = captioner.caption_embeddings(ev_emb)
        gen_s = time.perf_counter() - t1
        acc = caption_accuracy(ev_samples, caps)
        # generative rerank sanity: true canonical caption vs the same with another shape
        wins = 0
        for s, e in zip(ev_samples, ev_emb, strict=True):
            wrong = shapes.SHAPES[(shapes.SHAPES.index(s.shape) + 1) % len(shapes.SHAPES)]
            true_score = captioner.score_texts(e[None], s.captions[0])[0]
            wrong_score = captioner.score_texts(e[None], s.captions[0].replace(s.shape, wrong))[0]
            wins += true_score > wrong_score
        print(
            f"held-out seed {args.eval_seed} x{args.eval_count} ({dtype_name} CLIP): "
            + " ".join(f"{k}={v:.3f}" for k, v in acc.items())
            + f" score_true>wrong_shape={wins / len(ev_samples):.3f} "
            f"(captioning took {gen_s:.2f}s)"
        )
    for s, c in list(zip(ev_samples, caps, strict=True))[:5]:
        print(f"  truth: {s.captions[0]!r:50} generated: {c!r}")


if __name__ == "__main__":
    main()
