"""Damaged FAISS index files are rejected before FAISS reads them, and rebuilt (issue 15)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tests.helpers import run_cli


def _index_file(env: dict[str, str]) -> Path:
    (path,) = Path(env["PIXSEARCH_HOME"]).glob("index-*.faiss")
    return path


def _corrupt(good: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: a zeroed range, flipped bytes, or a truncation."""
    data = bytearray(good)
    kind = rng.integers(3)
    if kind == 0:
        start = int(rng.integers(len(data)))
        data[start : start + int(rng.integers(1, 65))] = bytes(min(64, len(data) - start))
        data = data[: len(good)]
    elif kind == 1:
        for at in rng.integers(len(data), size=int(rng.integers(1, 4))):
            data[at] ^= int(rng.integers(1, 256))
    else:
        data = data[: int(rng.integers(len(data)))]
    return bytes(data)


def test_every_damaged_index_file_is_rebuilt_and_answers_the_same(
    env, photos: Path, capsys, caplog
) -> None:
    assert run_cli(capsys, "index", str(photos)).code == 0
    path = _index_file(env)
    path.unlink()  # as a rebuild writes it (the run's file says it was built for 8 vectors)
    expected = run_cli(capsys, "search", "--no-cutoff", "a cat", "-k", "12", "--json").json()
    status = run_cli(capsys, "status", "--json").json()
    good = path.read_bytes()
    rng = np.random.default_rng(15)
    # The 64 zeroed payload bytes, header intact, that crashed FAISS with std::bad_alloc.
    header = 8 + 4 + int.from_bytes(good[8:12], "little")
    known = good[: header + 40] + bytes(64) + good[header + 104 :]
    damages = [known] + [_corrupt(good, rng) for _ in range(60)]
    with caplog.at_level(logging.WARNING):
        for i, bad in enumerate(damages):
            if bad == good:
                continue
            path.write_bytes(bad)
            if i % 2:
                got = run_cli(capsys, "search", "--no-cutoff", "a cat", "-k", "12", "--json")
                assert got.code == 0, (i, got.err)
                assert got.json() == expected, i
            else:
                got = run_cli(capsys, "status", "--json")
                assert got.code == 0, (i, got.err)
                assert got.json() == status, i
            assert path.read_bytes() == good, f"damage {i} was not repaired"
    assert sum("rebuilt it from 12 stored embeddings" in r.getMessage() for r in caplog.records)


def test_a_fault_inside_faiss_while_searching_rebuilds_once(env, photos: Path, capsys) -> None:
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from indexer.settings import Settings
    from search.engine import Searcher

    assert run_cli(capsys, "index", str(photos)).code == 0
    expected = [h.id for h in Searcher(Home(Settings()), get_encoder(Settings())).text("a cat", 5)]
    searcher = Searcher(Home(Settings()), get_encoder(Settings()))

    class Broken:
        ntotal = 12

        def search(self, *args: object, **kwargs: object) -> None:
            raise MemoryError("std::bad_alloc")

    searcher.index().index = Broken()
    assert [h.id for h in searcher.text("a cat", 5)] == expected
    assert not isinstance(searcher.index().index, Broken)
