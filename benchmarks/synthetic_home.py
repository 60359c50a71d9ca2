"""A synthetic photo home for the query benchmarks, written straight into SQLite.

`Collection` draws 512-d unit embeddings clustered the way CLIP photo embeddings are (uniform
random vectors would make every approximate index look terrible): a shared mean direction
(random photos have cosine ~0.45), 30 broad themes, topics inside them of Zipf-distributed
sizes, bursts of near-duplicates (cosine ~0.9), and noise with a decaying spectrum (a low
intrinsic dimension). `write_home` writes one image row with realistic metadata per vector,
from an array or block by block as the vectors come (a 10M collection never is in memory).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import common
import numpy as np

from indexer.stored import encode

DIM = 512


class Collection:
    """Clustered unit vectors resembling CLIP image embeddings of a photo library."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        rng = np.random.default_rng(seed)
        self.rng = rng
        q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
        spectrum = (np.arange(1, DIM + 1) ** -0.6).astype(np.float32)
        self.basis = (q * (spectrum / np.linalg.norm(spectrum))[:, None]).astype(np.float32)
        self.mean = self._directions(1)[0]
        self.themes = self._directions(30)
        n_topics = int(np.clip(n // 400, 50, 3000))
        self.topic_theme = rng.integers(0, 30, n_topics)
        self.topics = self._directions(n_topics)
        w = 1.0 / np.arange(1, n_topics + 1) ** 0.8
        self.topic_p = rng.permutation(w / w.sum())

    def _directions(self, count: int) -> np.ndarray:
        """Random unit directions drawn with the decaying spectrum."""
        v = self.rng.standard_normal((count, DIM)).astype(np.float32) @ self.basis
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def vectors(self, chunk: int = 100_000) -> np.ndarray:
        """All n vectors, bursts of near-duplicates in row (time) order."""
        out = np.empty((self.n, DIM), np.float32)
        start = 0
        for part in self.chunks(chunk):
            out[start : start + len(part)] = part
            start += len(part)
        return out

    def chunks(self, chunk: int = 100_000) -> Iterator[np.ndarray]:
        """The same vectors as `vectors`, a block at a time (never all in memory)."""
        rng = self.rng
        for start in range(0, self.n, chunk):
            m = min(chunk, self.n - start)
            sizes = rng.geometric(0.35, m)  # bursts of ~3 photos
            sizes = sizes[: np.searchsorted(np.cumsum(sizes), m) + 1]
            burst = np.repeat(np.arange(len(sizes)), sizes)[:m]
            topic = rng.choice(len(self.topics), len(sizes), p=self.topic_p)[burst]
            x = 0.65 * self.mean + 0.35 * self.themes[self.topic_theme[topic]]
            x += 0.45 * self.topics[topic]
            x += 0.35 * self._directions(len(sizes))[burst]
            x += 0.35 * self._directions(m)
            yield (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def queries(self, count: int, seed: int = 7) -> np.ndarray:
        """Text-like queries: a topic's (and its theme's) direction plus noise; the part of a
        text embedding outside the image space does not change any ranking."""
        rng = np.random.default_rng(seed)
        topic = rng.choice(len(self.topics), count, p=self.topic_p)
        x = 0.5 * self.mean + 0.3 * self.themes[self.topic_theme[topic]]
        x += 0.5 * self.topics[topic] + 0.5 * self._directions(count)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_home(
    home_dir: Path,
    model_key: str,
    vecs: np.ndarray | Iterable[np.ndarray],
    seed: int = 0,
    n: int | None = None,
) -> None:
    """A home whose database holds one image per vector, with these embeddings: an array,
    or blocks of rows written as they come (a 10M collection never is in memory at once)."""
    from indexer.home import Home
    from indexer.settings import Settings

    home = Home(Settings(home=home_dir))
    home.engine.dispose()  # creates and migrates the schema
    rng = np.random.default_rng(seed)
    start = datetime(2012, 1, 1)
    year = 365 * 86400
    twelve_years = 12 * year
    total = len(vecs) if isinstance(vecs, np.ndarray) else n
    assert total, "blocks of vectors need their total count"
    cameras = [
        ("Apple", "iPhone 13"), ("Canon", "EOS R6"), ("SONY", "ILCE-7M3"), (None, None),
        ("Leica", "Q2"),
    ]  # fmt: skip
    camera_p = [0.35, 0.3, 0.2, 0.145, 0.005]  # a rare camera: a selective filter
    formats, format_p = ["jpeg", "heif", "png", "webp"], [0.9, 0.07, 0.02, 0.01]
    conn = sqlite3.connect(home_dir / "pixsearch.db")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    blocks = [vecs] if isinstance(vecs, np.ndarray) else vecs
    cur = conn.execute(
        "INSERT INTO models (name, dim, generation) VALUES (?, ?, 1)", (model_key, DIM)
    )
    model_id = cur.lastrowid
    conn.commit()
    now = datetime(2024, 6, 1).isoformat(sep=" ")
    done = 0
    for block in blocks:
        for lo in range(0, len(block), 50_000):
            part = block[lo : lo + 50_000]
            m = len(part)
            first = done
            # Capture times rise with the row id (photos are indexed roughly in time order).
            seconds = ((first + np.arange(m) + rng.random(m)) * (twelve_years / total)).astype(
                np.int64
            )
            cam = rng.choice(len(cameras), m, p=camera_p)
            fmt = rng.choice(len(formats), m, p=format_p)
            conn.executemany(
                "INSERT INTO images (path, size, mtime_ns, content_hash, width, height, format,"
                " taken_at, camera_make, camera_model, gps_lat, gps_lon, indexed_at, shown_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?8)",
                (
                    (
                        f"/photos/{2012 + int(seconds[j]) // year}/IMG_{first + j:08d}.jpg",
                        3_000_000 + first + j,
                        1_700_000_000_000_000_000 + first + j,
                        f"{first + j:032x}",
                        4032,
                        3024,
                        formats[fmt[j]],
                        (start + timedelta(seconds=int(seconds[j]))).isoformat(sep=" "),
                        cameras[cam[j]][0],
                        cameras[cam[j]][1],
                        now,
                    )
                    for j in range(m)
                ),
            )
            conn.executemany(
                "INSERT INTO embeddings (content_hash, model_id, vector) VALUES (?, ?, ?)",
                ((f"{first + j:032x}", model_id, encode(part[j])) for j in range(m)),
            )
            conn.commit()
            done += m
        if done % 1_000_000 < len(block):
            common.log(f"  {done:,} rows written")
    conn.close()
