"""The captioner interface, the registry of implementations, and the stored captions."""

from __future__ import annotations

import logging
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from indexer import stored
from indexer.db import Caption
from indexer.dialects import insert_ignoring, keyword_search
from indexer.errors import ModelUnavailable
from indexer.home import Home
from indexer.types import Embeddings

log = logging.getLogger(__name__)


class Captioner(Protocol):
    """Writes captions for images, and scores how likely a text is as an image's caption."""

    #: Names the captioner; with the CLIP key for vector-based ones, keys its stored captions.
    name: str

    @property
    def clip_model(self) -> str | None:
        """The CLIP whose embeddings it reads, as its config names it (`ARCH` or
        `ARCH/WEIGHTS`); None for a captioner that reads the image files."""
        ...

    @property
    def clip_dim(self) -> int | None:
        """The dimension of those embeddings (None when it reads the image files)."""
        ...

    def caption(self, paths: Sequence[str], embeddings: Embeddings) -> list[str]:
        """One caption per image (given both its file and its stored CLIP embedding)."""
        ...

    def score(
        self, paths: Sequence[str], embeddings: Embeddings, text: str
    ) -> npt.NDArray[np.float32]:
        """Length-normalised log-likelihood of `text` as each image's caption."""
        ...


#: A kind of captioner: whether it recognises a spec, and how to build it.
class CaptionerKind(Protocol):
    def accepts(self, spec: str) -> bool: ...
    def build(self, spec: str, device: str) -> Captioner: ...


_REGISTRY: dict[str, CaptionerKind] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a captioner kind under `name` (checked in registration order)."""

    def deco(cls: type) -> type:
        _REGISTRY[name] = cls()
        return cls

    return deco


def captioner_kinds() -> list[str]:
    """Names of the registered captioner kinds."""
    _import_builtin()
    return list(_REGISTRY)


def _import_builtin() -> None:
    from indexer.captioners import clipcap_kind, vitgpt2  # noqa: F401  (they register)


def load_captioner(
    spec: str, device: str = "cpu", clip_model: str | None = None, clip_dim: int | None = None
) -> Captioner | None:
    """The captioner that `spec` names (`none` for none); `ModelUnavailable` if it can't load.

    With `clip_model` (the encoder's key, `ARCH/WEIGHTS`) and `clip_dim`, a captioner that
    reads CLIP embeddings must have been trained for that CLIP, else `ModelUnavailable`.
    """
    spec = spec.strip()
    if not spec or spec.lower() == "none":
        return None
    _import_builtin()
    kind_name, _, rest = spec.partition(":")
    if rest and kind_name in _REGISTRY and not Path(spec).exists():
        captioner = _REGISTRY[kind_name].build(rest, device)
    else:
        kind = next((k for k in _REGISTRY.values() if k.accepts(spec)), None)
        if kind is None:
            raise ModelUnavailable(
                f"no captioner kind accepts '{spec}' (kinds: {', '.join(_REGISTRY)})"
            )
        captioner = kind.build(spec, device)
    if clip_model is not None:
        check_clip(spec, captioner, clip_model, clip_dim)
    return captioner


def clip_matches(trained_for: str, key: str) -> bool:
    """Whether a captioner trained for `trained_for` reads the vectors of the CLIP `key`.

    `key` is an encoder key, `ARCH/WEIGHTS`; `trained_for` names the architecture alone
    (any weights of it are accepted) or the architecture and weights, as the key does.
    """
    arch = key.rpartition("/")[0]  # the weights part never holds a '/'; a hub name may
    return trained_for in (arch, key)


def check_clip(spec: str, captioner: Captioner, key: str, dim: int | None = None) -> None:
    """Refuse a vector-based captioner trained for another CLIP than `key` (or dimension)."""
    trained_for = captioner.clip_model
    if trained_for is None:
        return  # it reads the pixels: any CLIP will do
    wrong_dim = dim is not None and captioner.clip_dim is not None and captioner.clip_dim != dim
    if clip_matches(trained_for, key) and not wrong_dim:
        return
    if wrong_dim:
        trained_for, key = f"{trained_for} ({captioner.clip_dim}-d)", f"{key} ({dim}-d)"
    # Its captions would be decoded from another embedding space: fluent and wrong.
    raise ModelUnavailable(
        f"captioner {spec} was trained for CLIP {trained_for}, but pixsearch uses {key}; "
        "use a captioner trained for this CLIP (PIXSEARCH_CAPTIONER), or set it to none"
    )


def caption_key(captioner: Captioner, clip_key: str) -> str:
    """The `captioner` value stored with its captions.

    Captions decoded from CLIP embeddings depend on which CLIP made them, so a vector-based
    captioner's key names that CLIP too (`clipcap:folder@ARCH/WEIGHTS`); a captioner that
    reads the image files keeps its plain name, whatever CLIP indexes them.
    """
    return captioner.name if captioner.clip_model is None else f"{captioner.name}@{clip_key}"


def unavailable(spec: str, exc: BaseException) -> ModelUnavailable:
    """The one-line error for a captioner whose weights cannot be loaded."""
    reason = textwrap.shorten(str(exc), 110, placeholder="...")
    return ModelUnavailable(
        f"cannot load captioner '{spec}' ({reason}); without network, save it once elsewhere "
        "with save_pretrained and set PIXSEARCH_CAPTIONER=/path/to/folder, or set it to none"
    )


class CaptionStore:
    """Captions kept in the database per (file content, captioner): never computed twice.

    `clip_key` is the key of the CLIP whose embeddings are passed in; see `caption_key`.
    """

    def __init__(self, home: Home, captioner: Captioner, clip_key: str) -> None:
        self.home = home
        self.captioner = captioner
        #: The `captioner` column of every caption this store reads and writes.
        self.key = caption_key(captioner, clip_key)
        self._lock = threading.Lock()

    def get(self, hashes: Sequence[str]) -> dict[str, str]:
        """Stored captions for these contents."""
        out: dict[str, str] = {}
        unique = list(dict.fromkeys(hashes))
        with self.home.session() as s:
            for start in range(0, len(unique), 900):
                rows = s.execute(
                    select(Caption.content_hash, Caption.text).where(
                        Caption.captioner == self.key,
                        Caption.content_hash.in_(unique[start : start + 900]),
                    )
                )
                out.update({h: t for h, t in rows})
        return out

    def ensure(self, items: Sequence[tuple[str, str]], embeddings: Embeddings) -> dict[str, str]:
        """Captions for (content hash, path) items, generating and storing the missing ones."""
        have = self.get([h for h, _ in items])
        todo = [(i, h, p) for i, (h, p) in enumerate(items) if h not in have]
        if todo:
            with self._lock:  # one generation at a time; a second caller then finds them
                have.update(self.get([h for _, h, _ in todo]))
                todo = [t for t in todo if t[1] not in have]
                if todo:
                    texts = self.captioner.caption(
                        [p for _, _, p in todo], embeddings[[i for i, _, _ in todo]]
                    )
                    new = {h: t for (_, h, _), t in zip(todo, texts, strict=True)}
                    self._store(new)
                    have.update(new)
        return have

    def _store(self, captions: dict[str, str]) -> None:
        if not captions:
            return
        now = self.home.now()
        rows = [
            {"content_hash": h, "captioner": self.key, "text": t, "created_at": now}
            for h, t in captions.items()
        ]
        with self.home.session() as s, s.begin():
            insert_ignoring(s, Caption, rows)

    def keyword_hits(self, words: str, limit: int = 200) -> dict[str, float]:
        """Contents whose stored caption matches the words (a full-text index: FTS5 on
        SQLite, tsvector on PostgreSQL), with a 0-1 score (1: the best match)."""
        terms = [w for w in "".join(c if c.isalnum() else " " for c in words).split() if len(w) > 2]
        if not terms:
            return {}
        with self.home.engine.connect() as conn:
            rows = keyword_search(conn, self.key, terms, limit)
        if not rows:
            return {}
        best = max(r[1] for r in rows)
        return {h: strength / best if best > 0 else 1.0 for h, strength in rows}


def any_captions(home: Home) -> bool:
    """Whether the home holds any stored caption (from any captioner)."""
    if not home.exists():
        return False
    with home.session() as s:
        return s.scalar(select(Caption.content_hash).limit(1)) is not None


def caption_missing(
    home: Home, store: CaptionStore, model_id: int, dim: int, batch: int = 16
) -> int:
    """Caption every image that has no caption from this captioner yet; returns how many.

    `model_id` and `dim` name the stored embeddings of the CLIP the store is keyed for.
    """
    from indexer.db import Embedding, Image

    with home.session() as s:
        done = select(Caption.content_hash).where(Caption.captioner == store.key)
        rows = s.execute(
            select(Image.content_hash, Image.path, Embedding.vector)
            .join(Embedding, Embedding.content_hash == Image.content_hash)
            .where(Embedding.model_id == model_id, Image.content_hash.not_in(done))
        ).all()
    seen: dict[str, tuple[str, bytes]] = {}
    for digest, path, blob in rows:
        seen.setdefault(digest, (path, blob))
    items = list(seen.items())
    for start in range(0, len(items), batch):
        part = items[start : start + batch]
        vecs = stored.decode([b for _, (_, b) in part], dim)
        store.ensure([(h, p) for h, (p, _) in part], vecs)
    return len(items)
