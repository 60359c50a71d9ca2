"""Property-based tests of the HTTP API from its own OpenAPI schema (schemathesis): whatever a
client sends to any operation, valid or not, the server never answers with a 5xx."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from api.server import create_app
from indexer.settings import Settings
from tests.helpers import make_photos, picture

#: The schema is the app's own; this instance is never started (no home, no model loaded).
_DOCUMENT = create_app(
    Settings(home=Path(tempfile.gettempdir()) / "pixsearch-schema-only", api_key=None)
).openapi()

schema = schemathesis.openapi.from_dict(
    _DOCUMENT,
    config=SchemathesisConfig.from_dict(
        {
            "seed": 20240611,
            "generation": {"mode": "all", "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)

OPERATIONS = {
    "POST /search",
    "POST /search/image",
    "GET /images/{image_id}",
    "GET /images/{image_id}/thumbnail",
    "GET /images/{image_id}/similar",
    "GET /images",
    "GET /images/{image_id}/info",
    "GET /facets",
    "GET /ready",
    "GET /health",
}


@pytest.fixture(scope="module")
def home_settings(
    tiny_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """A home of 10 indexed photos: ids 1..10, so that fuzzed ids find some."""
    from indexer.encoder import get_encoder
    from indexer.home import Home
    from indexer.pipeline import Indexer

    config, checkpoint = tiny_model
    root = tmp_path_factory.mktemp("schemathesis")
    cfg = Settings(
        home=root / "home",
        model=str(config),
        pretrained=str(checkpoint),
        captioner="none",
        dedupe_threshold=0.9995,
        api_key=None,
        database_url=None,
        allowed_hosts=["testserver"],  # the Host of schemathesis's and TestClient's requests
    )
    folder = root / "photos"
    make_photos(folder, 10)
    Indexer(Home(cfg), get_encoder(cfg)).run([str(folder)])
    return cfg


@pytest.fixture(scope="module")
def served_app(home_settings: Settings) -> object:
    """The real app over that home (schemathesis runs its lifespan once)."""
    return create_app(home_settings)


def test_every_operation_is_covered() -> None:
    found = {
        f"{method.upper()} {path}" for path, ops in _DOCUMENT["paths"].items() for method in ops
    }
    assert found == OPERATIONS


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_never_fails_with_a_server_error(case, served_app) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(
        app=served_app,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )


#: Inputs the fuzzer may take long to reach, each of which once answered 500 or nonsense.
EDGE_BODIES = [
    # The last day there is has no next day: OverflowError.
    ({"text": "x", "filters": {"taken_before": "9999-12-31"}}, 200),
    ({"text": "x", "filters": {"taken_after": "9999-12-31", "taken_before": "0001-01-01"}}, 200),
    # A NUL byte in a folder: ValueError from os.path.expanduser.
    ({"text": "x", "filters": {"path_prefix": "~\x00"}}, 422),
    ({"text": "x", "filters": {"path_prefix": "/\x00/x"}}, 422),
    ({"text": "x", "filters": {"camera": "%_\x00", "format": ".\x00"}}, 200),
    ({"text": "\x00", "negative": ["\x00"]}, 200),
    ({"text": "x", "k": 200, "offset": 10_000}, 200),
    ({"text": "x", "image_id": 2**62}, 404),
]


@pytest.mark.parametrize(("body", "status"), EDGE_BODIES)
def test_edge_values(home_settings: Settings, body: dict, status: int) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(home_settings)) as client:
        res = client.post("/search", json=body)
        assert res.status_code == status, res.text
        form = {k: v for k, v in body.get("filters", {}).items()}
        res = client.post(
            "/search/image", files={"file": ("q.png", _png(), "image/png")}, data=form
        )
        assert res.status_code == (422 if status == 422 else 200), res.text


def test_weights_are_a_ratio_and_must_be_finite(home_settings: Settings) -> None:
    """Huge weights used to overflow float32 into a NaN query that matched nothing."""
    from fastapi.testclient import TestClient

    base = {"text": "a red circle", "image_id": 3, "k": 10, "cutoff": False}
    with TestClient(create_app(home_settings)) as client:

        def ids(**extra: object) -> list[int]:
            res = client.post("/search", json={**base, **extra})
            assert res.status_code == 200, res.text
            return [h["id"] for h in res.json()["results"]]

        assert ids(weights=[1e308, 1e308]) == ids(weights=[1, 1]) == ids()
        assert len(ids(weights=[1e308, 1e308])) == 10
        assert ids(weights=[0, 1e-300])[0] == 3  # the image alone
        for bad in ("[NaN, 1]", "[Infinity, 1]", "[-1, 1]", "[0, 0]"):
            body = '{"text": "x", "image_id": 1, "weights": ' + bad + "}"
            res = client.post("/search", content=body, headers={"content-type": "application/json"})
            assert res.status_code == 422, (bad, res.text)


def _png() -> bytes:
    import io

    buf = io.BytesIO()
    picture(7, (64, 48)).save(buf, "PNG")
    return buf.getvalue()
