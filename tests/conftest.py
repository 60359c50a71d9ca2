"""Fixtures: a tiny open_clip model with local random weights, and a fresh home per test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# TestClient's Host header, for every test's app: by default the server answers only to its
# own host names (DNS rebinding).
os.environ.setdefault("PIXSEARCH_ALLOWED_HOSTS", '["testserver"]')

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test an id of its own, and refuse a run where two still share one.

    schemathesis names its items by operation ("...[POST /search]") but leaves their ids
    alike, and pytest-xdist (the README's command runs the suite on two workers) schedules
    one test per id: nine of the ten operations went unfuzzed without a word.
    """
    ids: dict[str, int] = {}
    for item in items:
        head, _, last = item.nodeid.rpartition("::")
        if head and last != item.name:
            renamed = f"{head}::{item.name}"
            if hasattr(item, "_id"):  # pytest 9 keeps the id parsed
                item._id = type(item._id).parse(renamed)
            else:
                item._nodeid = renamed
        ids[item.nodeid] = ids.get(item.nodeid, 0) + 1
    shared = [nodeid for nodeid, count in ids.items() if count > 1]
    if shared:
        raise pytest.UsageError(f"tests share an id, so some would not run: {shared[:3]}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of a one-layer open_clip model with seeded random weights."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny_model")
    config = folder / "pixsearch-test-tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("pixsearch-test-tiny", pretrained=None)
    checkpoint = folder / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: tuple[Path, Path]
) -> dict[str, str]:
    """A fresh home using the tiny model, set through the environment as a user would."""
    config, checkpoint = tiny_model
    values = {
        "PIXSEARCH_HOME": str(tmp_path / "home"),
        "PIXSEARCH_MODEL": str(config),
        "PIXSEARCH_PRETRAINED": str(checkpoint),
        "PIXSEARCH_BATCH_SIZE": "8",
        # The random tiny model puts distinct pictures closer than real CLIP models do;
        # only true copies should collapse as duplicates here.
        "PIXSEARCH_DEDUPE_THRESHOLD": "0.9995",
        "PIXSEARCH_CAPTIONER": "none",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of twelve distinct JPEG photos."""
    from tests.helpers import make_photos

    folder = tmp_path / "photos"
    make_photos(folder, 12)
    return folder


@pytest.fixture(scope="session")
def pg_server():  # type: ignore[no-untyped-def]
    """A PostgreSQL server for the whole run (tests/pg.py); skipped where PostgreSQL is not
    installed, failed instead when CI=true (CI installs it: .ci/run)."""
    from tests.pg import PgServer, find_bin

    bindir = find_bin()
    if bindir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PgServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A fresh PostgreSQL database, set as PIXSEARCH_DATABASE_URL as a user would."""
    url = pg_server.database()
    monkeypatch.setenv("PIXSEARCH_DATABASE_URL", url)
    yield str(url)
    pg_server.drop(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    """Runs a test on each database pixsearch supports: "sqlite" (the default, a file in the
    home) or a fresh PostgreSQL database's URL (set as PIXSEARCH_DATABASE_URL)."""
    if request.param == "sqlite":
        return "sqlite"
    return str(request.getfixturevalue("pg_url"))
