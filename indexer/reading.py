"""The read stage of an indexing run: hash one file, and decode and prepare its pixels unless
its content is already embedded (run in reader threads here, or on Ray workers)."""

from __future__ import annotations

import logging
from collections.abc import Container

from indexer.encoder import Preprocess, prepare_pixels
from indexer.errors import UnreadableImage
from indexer.imageio import DRAFT_OVERSAMPLE, content_hash, decode, max_file_bytes, read_file
from indexer.types import Failure, Job, Prepared

log = logging.getLogger(__name__)


def read(
    job: Job, embedded: Container[str], preprocess: Preprocess, max_pixels: int
) -> Prepared | Failure:
    """The read stage: hash the file, and decode and prepare it unless its content is known
    (`preprocess`: the model's input size and resizing; Ray workers call this too).

    Whatever goes wrong with one file is that file's `Failure`: it never stops the run.
    """
    try:
        data = read_file(job.entry.path, max_file_bytes(max_pixels))
        digest = content_hash(data)
        if digest in embedded:
            return Prepared(job, digest)
        size = preprocess.size
        img, meta = decode(data, max_pixels=max_pixels, min_side=size * DRAFT_OVERSAMPLE)
        return Prepared(job, digest, meta, prepare_pixels(img, preprocess))
    except UnreadableImage as exc:
        return Failure(job.entry.path, str(exc))
    except MemoryError:
        return Failure(job.entry.path, "image too large: not enough memory to read it")
    except Exception as exc:  # a decoder's bug on one odd file must not end the run
        log.debug("reading %r failed", job.entry.path, exc_info=True)
        return Failure(job.entry.path, f"cannot read image: {type(exc).__name__}: {exc}"[:200])
