"""What Ray workers run for `pixsearch index --ray`: read and decode files, then embed them.

Both stages reuse the local run's code (`reading.read`, `ClipEncoder`), so a file gives the
same hash, metadata and pixels on a worker as on this machine. Rows travel as Ray Data numpy
batches: `idx` (the job's number in the driver's plan), `digest`, `meta` (JSON), `error`,
`has_pixels`, then `pixels` out of the read stage and `vector` out of the embed stage.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterable
from datetime import datetime

import numpy as np

from indexer.encoder import ClipEncoder, Preprocess
from indexer.reading import read
from indexer.types import Failure, FileEntry, ImageMeta, Job

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
#: The columns both stages pass on unchanged.
CARRIED = ("idx", "digest", "meta", "error", "has_pixels")


class KnownContent:
    """The content hashes embedded already, as the sorted first 64 bits of each: 8 bytes a
    photo, shared by every worker through Ray's object store.

    A false match (about 1 in 10^11 at 50 million photos) is harmless: that file comes back
    without pixels, the writer finds no stored twin, and the driver reads it itself.
    """

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys

    @staticmethod
    def keys_of(digests: Iterable[str]) -> np.ndarray:
        """The sorted keys of these hex digests."""
        keys = np.fromiter((int(d[:16], 16) for d in digests), np.uint64)
        keys.sort()
        return keys

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, str) or not self.keys.size:
            return False
        key = np.uint64(int(digest[:16], 16))
        i = int(np.searchsorted(self.keys, key))
        return i < self.keys.size and bool(self.keys[i] == key)


def meta_to_json(meta: ImageMeta) -> str:
    """An image's metadata as one JSON string (a Ray Data column holds plain strings)."""
    return json.dumps(
        {
            "width": meta.width,
            "height": meta.height,
            "format": meta.format,
            "taken_at": meta.taken_at.isoformat() if meta.taken_at else None,
            "camera_make": meta.camera_make,
            "camera_model": meta.camera_model,
            "gps_lat": meta.gps_lat,
            "gps_lon": meta.gps_lon,
        }
    )


def meta_from_json(text: str) -> ImageMeta:
    """The inverse of `meta_to_json`."""
    fields = json.loads(text)
    taken = fields.pop("taken_at")
    return ImageMeta(**fields, taken_at=datetime.fromisoformat(taken) if taken else None)


def read_batch(batch: Batch, known: np.ndarray, preprocess: Preprocess, max_pixels: int) -> Batch:
    """The read stage on a worker: hash every file, decode and prepare those whose content is
    not known. A file this worker cannot read is that row's `error`, as in a local run."""
    content = KnownContent(known)
    n = len(batch["idx"])
    pixels = np.zeros((n, preprocess.size, preprocess.size, 3), np.uint8)
    has = np.zeros(n, bool)
    digests, metas, errors = [""] * n, [""] * n, [""] * n
    for i, path in enumerate(batch["path"]):
        result = read(Job(FileEntry(str(path), 0, 0), "new"), content, preprocess, max_pixels)
        if isinstance(result, Failure):
            # Which machine could not read it: with a shared folder mounted on some nodes only,
            # the driver sees files that a worker cannot.
            errors[i] = f"{result.error} (on Ray node {socket.gethostname()})"
            continue
        digests[i] = result.content_hash
        if result.meta is not None:
            metas[i] = meta_to_json(result.meta)
        if result.pixels is not None:
            pixels[i] = result.pixels
            has[i] = True
    return {
        "idx": np.asarray(batch["idx"], np.int64),
        "digest": np.asarray(digests, dtype=object),
        "meta": np.asarray(metas, dtype=object),
        "error": np.asarray(errors, dtype=object),
        "has_pixels": has,
        "pixels": pixels,
    }


class Embedder:
    """The embed stage: one per actor, loading its encoder once; torch gets as many threads as
    the actor has CPUs."""

    def __init__(
        self, model: str, pretrained: str, device: str, precision: str, threads: int
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.encoder = ClipEncoder(model, pretrained, device, precision).load()
        self.dim = self.encoder.dim

    def __call__(self, batch: Batch) -> Batch:
        has = np.asarray(batch["has_pixels"], bool)
        vectors = np.zeros((len(has), self.dim), np.float32)
        if has.any():
            vectors[has] = self.encoder.embed_pixels(np.asarray(batch["pixels"])[has])
        out = {name: batch[name] for name in CARRIED}
        out["vector"] = vectors
        return out
