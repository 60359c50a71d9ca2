"""Small real components for tests: a tiny ViT-GPT-2 captioner, homes of synthetic vectors."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from indexer.db import Embedding, Image, Library, Model
from indexer.home import Home
from indexer.settings import Settings
from tests.helpers import picture

SENTENCES = [
    "a dog running on a beach at sunset",
    "a red car parked in the street",
    "two people riding bicycles in a park",
    "a bowl of fruit on a wooden table",
    "a cat sleeping on a sofa",
    "mountains covered in snow under a blue sky",
] * 20


def build_tiny_captioner(folder: Path) -> Path:
    """A VisionEncoderDecoder (one-layer ViT + one-layer GPT-2) with random weights, and a
    byte-level BPE tokenizer and image processor made here, all saved with save_pretrained."""
    return build_vit_gpt2(folder)


def build_vit_gpt2(
    folder: Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    layers: int = 1,
    heads: int = 2,
    vocab_size: int | None = None,
    positions: int = 64,
) -> Path:
    """A ViT + GPT-2 VisionEncoderDecoder of the given shape (the same shape in both towers)
    with seeded random weights, a byte-level BPE tokenizer trained here and a ViT image
    processor, saved with save_pretrained. `vocab_size` defaults to the tokenizer's; a larger
    one keeps a real model's output layer (ids the tokenizer lacks decode to nothing)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (  # type: ignore[attr-defined]  # GPT2TokenizerFast: v5 alias
        GPT2Config,
        GPT2LMHeadModel,
        GPT2TokenizerFast,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(0)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(SENTENCES, trainer)
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.pad_token = tok.eos_token
    encoder = ViTModel(
        ViTConfig(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
        )
    )
    decoder = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab_size or len(tok),
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            n_positions=positions,
            add_cross_attention=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = tok.bos_token_id
        cfg.pad_token_id = tok.pad_token_id
        cfg.eos_token_id = tok.eos_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def synthetic_home(
    settings: Settings, model_key: str, vectors: np.ndarray, folder: Path, with_files: bool = False
) -> list[int]:
    """Write a home whose images have exactly these embeddings (unit rows); returns ids.

    Image i is `folder/img_i.jpg`, taken on 2020-01-01 plus i days; with `with_files` the
    files exist (pictures made here), so thumbnails and downloads work too.
    """
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    home = Home(settings)
    folder.mkdir(parents=True, exist_ok=True)
    now = home.now()
    with home.session() as s, s.begin():
        model = Model(name=model_key, dim=vectors.shape[1], generation=1)
        s.add(model)
        s.add(Library(path=str(folder), added_at=now))
        s.flush()
        rows = []
        for i, vec in enumerate(vectors):
            path = folder / f"img_{i:05d}.jpg"
            if with_files:
                picture(i, (64, 48)).save(path)
            digest = f"{i:032x}"
            rows.append(
                Image(
                    path=str(path),
                    size=1,
                    mtime_ns=1,
                    content_hash=digest,
                    width=640 + i % 3,
                    height=480,
                    format="jpeg",
                    taken_at=datetime(2020, 1, 1) + timedelta(days=i),
                    camera_make="Canon" if i % 2 else "Nikon",
                    camera_model="X",
                    indexed_at=now,
                )
            )
            s.add(
                Embedding(
                    content_hash=digest,
                    model_id=model.id,
                    vector=np.asarray(vec, np.float32).tobytes(),
                )
            )
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]
