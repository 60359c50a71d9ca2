"""ClipCap-style captioner: a CLIP image embedding -> MLP prefix -> small GPT-2 -> caption.

Captions come straight from stored (L2-normalised) CLIP embeddings; no picture is decoded.
The GPT-2 shares open_clip's BPE vocabulary (49408 tokens), so open_clip's tokenizer
encodes and decodes its text, and its ``<start_of_text>``/``<end_of_text>`` ids are the
bos/eos tokens.

A captioner folder holds two files:

* ``clipcap_config.json``: ``format`` ("pixsearch-clipcap"), ``version``, ``clip_model`` and
  ``clip_embed_dim`` (the CLIP embedding space it expects), ``prefix_length``,
  ``mapping_hidden``, ``gpt2`` (``GPT2Config`` keyword arguments), ``bos_token_id``,
  ``eos_token_id``, ``max_new_tokens`` and ``weights`` (file name of the weights).
* the weights, an ``.npz`` written by :func:`pack_state_dict` (float16 values; big tensors
  whose rows are mostly zero, such as the token embedding, are stored row-sparse).

Vocabulary rows that are exactly zero (tokens never seen in training) have a constant zero
logit. Generation and scoring exploit that: they compute logits only for the non-zero rows
and fold the zero rows into the softmax normaliser exactly, so they stay fast on CPU.
Greedy decoding never emits a zero-row token (nor the start-of-text token).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CONFIG_NAME = "clipcap_config.json"
FORMAT_NAME = "pixsearch-clipcap"
FORMAT_VERSION = 1

_SPARSE_ROWS = ".__rows__"
_SPARSE_VALUES = ".__values__"
_SPARSE_SHAPE = ".__shape__"


# --------------------------------------------------------------------------- weights format


def pack_state_dict(
    state: Mapping[str, npt.NDArray[Any]],
    sparse_keys: Sequence[str] = (),
    dtype: npt.DTypeLike = np.float16,
) -> dict[str, npt.NDArray[Any]]:
    """Arrays for ``np.savez_compressed``: floats cast to ``dtype``, ``sparse_keys`` row-sparse.

    A row-sparse tensor keeps only its non-zero rows (and their indices and full shape).
    """
    out: dict[str, npt.NDArray[Any]] = {}
    for key, value in state.items():
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(dtype)
        if key in sparse_keys:
            flat = arr.reshape(arr.shape[0], -1)
            rows = np.flatnonzero(np.any(flat != 0, axis=1)).astype(np.int64)
            out[key + _SPARSE_ROWS] = rows
            out[key + _SPARSE_VALUES] = arr[rows]
            out[key + _SPARSE_SHAPE] = np.asarray(arr.shape, dtype=np.int64)
        else:
            out[key] = arr
    return out


def unpack_state_dict(
    arrays: Mapping[str, npt.NDArray[Any]], dtype: npt.DTypeLike = np.float32
) -> dict[str, npt.NDArray[Any]]:
    """Inverse of :func:`pack_state_dict`: dense arrays, floats cast to ``dtype``."""
    out: dict[str, npt.NDArray[Any]] = {}
    for key in arrays:
        if key.endswith((_SPARSE_VALUES, _SPARSE_SHAPE)):
            continue
        if key.endswith(_SPARSE_ROWS):
            name = key[: -len(_SPARSE_ROWS)]
            values = np.asarray(arrays[name + _SPARSE_VALUES])
            shape = tuple(int(v) for v in arrays[name + _SPARSE_SHAPE])
            dense = np.zeros(shape, dtype=dtype)
            dense[np.asarray(arrays[key])] = values.astype(dtype)
            out[name] = dense
            continue
        arr = np.asarray(arrays[key])
        out[key] = arr.astype(dtype) if np.issubdtype(arr.dtype, np.floating) else arr
    return out


def load_packed(path: str | Path) -> dict[str, npt.NDArray[Any]]:
    """Read a packed ``.npz`` back into dense float32 arrays."""
    with np.load(path, allow_pickle=False) as data:
        return unpack_state_dict({k: data[k] for k in data.files})


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ClipCapConfig:
    """The JSON config of a captioner folder."""

    clip_model: str
    clip_embed_dim: int
    prefix_length: int
    mapping_hidden: int
    gpt2: dict[str, Any]
    bos_token_id: int
    eos_token_id: int
    max_new_tokens: int = 20
    weights: str = "clipcap_weights.npz"
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @classmethod
    def load(cls, folder: str | Path) -> ClipCapConfig:
        """Read ``clipcap_config.json`` from ``folder``."""
        raw = json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8"))
        if raw.get("format") != FORMAT_NAME:
            raise ValueError(f"{folder}: not a {FORMAT_NAME} folder (format={raw.get('format')!r})")
        if int(raw.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{folder}: unsupported {FORMAT_NAME} version {raw['version']}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    def save(self, folder: str | Path) -> Path:
        """Write ``clipcap_config.json`` into ``folder``; returns its path."""
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n", encoding="utf-8")
        return path


def build_model(config: ClipCapConfig) -> Any:
    """A freshly initialised ClipCap ``torch.nn.Module`` (mapping MLP + ``GPT2LMHeadModel``).

    Attributes: ``gpt`` (the ``GPT2LMHeadModel``), ``mapper``; method ``prefix(emb)``.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    class ClipCapModel(torch.nn.Module):
        """Maps a CLIP embedding to ``prefix_length`` GPT-2 input vectors."""

        def __init__(self) -> None:
            super().__init__()
            gcfg = GPT2Config(
                **config.gpt2,
                bos_token_id=config.bos_token_id,
                eos_token_id=config.eos_token_id,
                tie_word_embeddings=True,
            )
            self.gpt = GPT2LMHeadModel(gcfg)
            width = gcfg.n_embd
            self.prefix_length = config.prefix_length
            self.width = width
            self.mapper = torch.nn.Sequential(
                torch.nn.Linear(config.clip_embed_dim, config.mapping_hidden),
                torch.nn.Tanh(),
                torch.nn.Linear(config.mapping_hidden, config.prefix_length * width),
            )

        def prefix(self, emb: torch.Tensor) -> torch.Tensor:
            """(n, d) normalised CLIP embeddings -> (n, P, width) GPT-2 input vectors."""
            return self.mapper(emb).view(emb.shape[0], self.prefix_length, self.width)

    return ClipCapModel()


def model_state_dict(model: torch.nn.Module) -> dict[str, npt.NDArray[Any]]:
    """The model's weights as numpy arrays, without the tied (duplicate) LM head."""
    return {
        k: v.detach().cpu().float().numpy()
        for k, v in model.state_dict().items()
        if k != "gpt.lm_head.weight"
    }


def load_model(folder: str | Path, device: str = "cpu") -> tuple[ClipCapConfig, Any]:
    """Config and model (eval mode, float32) of a captioner folder."""
    import torch

    config = ClipCapConfig.load(folder)
    model = build_model(config)
    state = {k: torch.from_numpy(v) for k, v in load_packed(Path(folder) / config.weights).items()}
    state["gpt.lm_head.weight"] = state["gpt.transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    # GPT-2 keeps some non-persistent buffers; anything else missing is an error.
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not match config (missing={missing}, unexpected={unexpected})"
        )
    model.gpt.tie_weights()
    model.eval()
    model.to(device)
    return config, model


# --------------------------------------------------------------------------- captioner


class ClipCapCaptioner:
    """Captions and caption likelihoods from stored CLIP image embeddings.

    ``folder`` is a captioner folder (see the module docstring). The model loads lazily on
    first use; the object is safe to share between threads.
    """

    def __init__(self, folder: str | Path, device: str = "cpu", batch_size: int = 256) -> None:
        self.folder = Path(folder)
        self.config = ClipCapConfig.load(self.folder)
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any, Any] | None = None

    @property
    def clip_model(self) -> str:
        """Name of the CLIP model whose image embeddings this captioner reads."""
        return self.config.clip_model

    @property
    def dim(self) -> int:
        """Expected embedding dimension."""
        return self.config.clip_embed_dim

    def _load(self) -> tuple[Any, Any, Any, Any]:
        with self._lock:
            if self._loaded is None:
                import torch
                from open_clip.tokenizer import SimpleTokenizer

                _, model = load_model(self.folder, self.device)
                wte = model.gpt.transformer.wte.weight.detach()
                nonzero = torch.nonzero(wte.abs().sum(dim=1) > 0).flatten()
                active = nonzero if len(nonzero) < wte.shape[0] else None
                self._loaded = (model, SimpleTokenizer(), active, wte)
                log.info(
                    "loaded captioner %s (%d active tokens)",
                    self.folder,
                    wte.shape[0] if active is None else len(active),
                )
            return self._loaded

    def _inputs(self, embeddings: npt.ArrayLike) -> torch.Tensor:
        import torch

        arr = np.asarray(embeddings, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.config.clip_embed_dim:
            raise ValueError(
                f"expected embeddings of shape (n, {self.config.clip_embed_dim}), got {arr.shape}"
            )
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        arr = arr / np.maximum(norms, 1e-12)
        return torch.from_numpy(arr).to(self.device)

    @staticmethod
    def _log_norm(logits: torch.Tensor, n_inactive: int) -> torch.Tensor:
        """log-sum-exp over the whole vocabulary (zero rows have logit 0)."""
        import math

        import torch

        if n_inactive == 0:
            return torch.logsumexp(logits, dim=-1)
        extra = torch.full_like(logits[..., :1], math.log(n_inactive))
        return torch.logsumexp(torch.cat([logits, extra], dim=-1), dim=-1)

    def caption_embeddings(
        self, embeddings: npt.ArrayLike, max_new_tokens: int | None = None
    ) -> list[str]:
        """Greedy captions for (n, d) CLIP image embeddings (normalised here again)."""
        import torch

        model, tokenizer, active, wte = self._load()
        x = self._inputs(embeddings)
        limit = max_new_tokens or self.config.max_new_tokens
        limit = min(limit, model.gpt.config.n_positions - self.config.prefix_length - 1)
        # candidate tokens: the non-zero rows (or all), never the start-of-text token
        cand = torch.arange(wte.shape[0], device=wte.device) if active is None else active
        cand = cand[cand != self.config.bos_token_id]
        head = wte[cand]
        eos = self.config.eos_token_id
        captions: list[str] = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start : start + self.batch_size]
                n = chunk.shape[0]
                bos = torch.full((n, 1), self.config.bos_token_id, device=chunk.device)
                inputs = torch.cat([model.prefix(chunk), wte[bos]], dim=1)
                out = model.gpt.transformer(inputs_embeds=inputs, use_cache=True)
                hidden, past = out.last_hidden_state[:, -1], out.past_key_values
                tokens = torch.full((n, limit), eos, dtype=torch.long, device=chunk.device)
                done = torch.zeros(n, dtype=torch.bool, device=chunk.device)
                for step in range(limit):
                    nxt = cand[(hidden @ head.T).argmax(dim=-1)]
                    nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                    tokens[:, step] = nxt
                    done |= nxt == eos
                    if bool(done.all()) or step == limit - 1:
                        break
                    out = model.gpt.transformer(
                        inputs_embeds=wte[nxt][:, None, :], past_key_values=past, use_cache=True
                    )
                    hidden, past = out.last_hidden_state[:, -1], out.past_key_values
                for row in tokens.tolist():
                    ids = row[: row.index(eos)] if eos in row else row
                    captions.append(_clean_decoded(tokenizer.decode(ids)))
        return captions

    def score_texts(self, embeddings: npt.ArrayLike, text: str) -> npt.NDArray[np.float32]:
        """Mean per-token log-likelihood of ``text`` (plus end-of-text) for each embedding."""
        import torch

        model, tokenizer, active, wte = self._load()
        x = self._inputs(embeddings)
        room = model.gpt.config.n_positions - self.config.prefix_length - 1
        ids = [*tokenizer.encode(text)[:room], self.config.eos_token_id]
        target = torch.tensor(ids, device=x.device)
        n_inactive = 0 if active is None else wte.shape[0] - len(active)
        head = wte if active is None else wte[active]
        scores: list[npt.NDArray[np.float32]] = []
        with torch.inference_mode():
            tokens_in = torch.tensor([self.config.bos_token_id, *ids[:-1]], device=x.device)
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start : start + self.batch_size]
                n = chunk.shape[0]
                emb = wte[tokens_in][None].expand(n, -1, -1)
                inputs = torch.cat([model.prefix(chunk), emb], dim=1)
                hidden = model.gpt.transformer(inputs_embeds=inputs).last_hidden_state
                hidden = hidden[:, self.config.prefix_length :]
                lse = self._log_norm(hidden @ head.T, n_inactive)
                picked = (hidden * wte[target][None]).sum(dim=-1)
                scores.append((picked - lse).mean(dim=1).float().cpu().numpy())
        return np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)


def _clean_decoded(text: str) -> str:
    """open_clip's decode output, tidied: no special tokens, single spaces, ' ,' -> ','."""
    for special in ("<start_of_text>", "<end_of_text>"):
        text = text.replace(special, " ")
    return " ".join(text.split()).replace(" ,", ",").strip()
