"""The HTTP API through httpx against the real app (tiny CLIP model, real index)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.server import create_app
from tests.helpers import make_photos, picture, post_search, run_cli


@pytest.fixture
def client(env, photos: Path, capsys) -> Iterator[TestClient]:
    sub = photos / "trip"
    make_photos(sub, 5, start=100)
    assert run_cli(capsys, "index", str(photos)).code == 0
    with TestClient(create_app()) as c:
        yield c


def test_health_ready_docs(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] and ready["images"] == 17
    assert ready["model"].startswith("pixsearch-test-tiny/") and ready["captioner"] is None
    assert client.get("/docs").status_code == 200
    assert "/search/image" in client.get("/openapi.json").json()["paths"]


def test_text_search_shape_thumbnail_and_original(client: TestClient, photos: Path) -> None:
    body = post_search(client, text="a red circle", k=5, cutoff=False)
    assert set(body) >= {"results", "took_ms"}
    hits = body["results"]
    assert len(hits) == 5
    assert set(hits[0]) == {
        "id",
        "path",
        "score",
        "width",
        "height",
        "taken_at",
        "date",
        "dated_by",
        "caption",
        "thumbnail_url",
    }
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    first = hits[0]
    thumb = client.get(first["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    original = client.get(f"/images/{first['id']}")
    assert original.headers["content-type"] == "image/jpeg"
    assert original.content == Path(first["path"]).read_bytes()


def test_similar_puts_the_image_first(client: TestClient) -> None:
    some = post_search(client, text="x", k=3, cutoff=False)["results"][2]
    similar = client.get(f"/images/{some['id']}/similar", params={"k": 4}).json()["results"]
    assert similar[0]["id"] == some["id"] and similar[0]["score"] == pytest.approx(1, abs=1e-4)
    via_search = post_search(client, image_id=some["id"], k=4)["results"]
    assert [h["id"] for h in via_search] == [h["id"] for h in similar]


def test_unknown_ids_are_404(client: TestClient) -> None:
    for url in ("/images/999999", "/images/999999/thumbnail", "/images/999999/similar"):
        assert client.get(url).status_code == 404, url
    assert client.post("/search", json={"image_id": 999999}).status_code == 404


def test_bad_requests_are_422(client: TestClient) -> None:
    bad = [
        {},
        {"text": ""},
        {"text": "x", "k": 0},
        {"text": "x", "k": 100000},
        {"text": "x", "offset": -1},
        {"text": "x", "filters": {"min_width": "wide"}},
        {"text": "x", "rerank": "sideways"},
        {"text": "x", "weights": [-1, 1]},
        {"text": "x", "unknown": 1},
    ]
    for body in bad:
        assert client.post("/search", json=body).status_code == 422, body
    res = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert res.status_code == 422
    assert client.get("/images/abc").status_code == 422
    assert client.get("/images/1/similar", params={"k": 0}).status_code == 422


def test_path_filter_returns_k_whenever_k_match(client: TestClient, photos: Path) -> None:
    trip = str(photos / "trip")
    for k in (3, 5):
        hits = post_search(client, text="x", k=k, cutoff=False, filters={"path_prefix": trip})[
            "results"
        ]
        assert len(hits) == k and all(h["path"].startswith(trip + os.sep) for h in hits)
    assert (
        len(
            post_search(client, text="x", k=50, cutoff=False, filters={"path_prefix": trip})[
                "results"
            ]
        )
        == 5
    )
    none = post_search(client, text="x", filters={"path_prefix": str(photos / "nowhere")})
    assert none["results"] == []


def test_paging_is_stable_and_complete(client: TestClient) -> None:
    whole = [
        h["id"] for h in post_search(client, text="y", k=17, cutoff=False, rerank=False)["results"]
    ]
    pages = []
    for offset in range(0, 17, 5):
        pages += [
            h["id"]
            for h in post_search(client, text="y", k=5, offset=offset, cutoff=False, rerank=False)[
                "results"
            ]
        ]
    assert pages == whole and len(set(whole)) == 17


def test_combined_and_negative_queries(client: TestClient) -> None:
    some = post_search(client, text="x", k=1, cutoff=False)["results"][0]["id"]
    text_only = post_search(client, text="a blue square", k=17, cutoff=False)["results"]
    image_heavy = post_search(
        client, text="a blue square", image_id=some, weights=[0.1, 0.9], k=17, cutoff=False
    )["results"]
    assert image_heavy[0]["id"] == some
    assert [h["id"] for h in image_heavy] != [h["id"] for h in text_only]
    plain = [h["id"] for h in post_search(client, image_id=some, k=17, cutoff=False)["results"]]
    pushed = [
        h["id"]
        for h in post_search(client, image_id=some, negative=["a blue square"], k=17, cutoff=False)[
            "results"
        ]
    ]
    assert pushed != plain
    # The photo that best matches the negative text moves down.
    best_for_negative = text_only[0]["id"]
    assert pushed.index(best_for_negative) > plain.index(best_for_negative)


def test_upload_query(client: TestClient, photos: Path) -> None:
    data = (photos / "img_0004.jpg").read_bytes()
    res = client.post(
        "/search/image",
        files={"file": ("q.jpg", data, "image/jpeg")},
        data={"k": "3", "cutoff": "false"},
    )
    assert res.status_code == 200, res.text
    hits = res.json()["results"]
    assert len(hits) == 3 and hits[0]["path"] == str(photos / "img_0004.jpg")
    # Options as query parameters work too.
    res = client.post(
        "/search/image?k=2&path_prefix=" + str(photos / "trip"),
        files={"file": ("q.jpg", data, "image/jpeg")},
    )
    assert res.status_code == 200 and len(res.json()["results"]) <= 2
    assert all("/trip/" in h["path"] for h in res.json()["results"])


def test_bad_uploads(client: TestClient, monkeypatch) -> None:
    res = client.post("/search/image", files={"file": ("a.jpg", b"not an image", "image/jpeg")})
    assert res.status_code == 400 and "not a supported image" in res.json()["detail"]
    res = client.post("/search/image", files={"file": ("a.jpg", b"", "image/jpeg")})
    assert res.status_code == 400
    res = client.post("/search/image", data={"k": "3"})
    assert res.status_code == 422


def test_upload_size_limit(env, photos: Path, capsys, monkeypatch) -> None:
    run_cli(capsys, "index", str(photos))
    monkeypatch.setenv("PIXSEARCH_MAX_UPLOAD_BYTES", "2000")
    buf = io.BytesIO()
    picture(1, (400, 300)).save(buf, "PNG")
    with TestClient(create_app()) as c:
        res = c.post("/search/image", files={"file": ("big.png", buf.getvalue(), "image/png")})
    assert res.status_code == 413


def test_upload_options_in_the_query_have_the_form_limits(client: TestClient) -> None:
    png = io.BytesIO()
    picture(1).save(png, "PNG")
    files = {"file": ("q.png", png.getvalue(), "image/png")}
    for where in ("params", "data"):
        res = client.post("/search/image", files=files, **{where: {"text": "x" * 1001}})
        assert res.status_code == 422, (where, res.text)
        assert res.json()["detail"][0]["loc"][-1] == "text"
    res = client.post("/search/image", files=files, params={"text": "x" * 1000, "k": "2"})
    assert res.status_code == 200, res.text


def test_empty_home_answers_with_nothing(env) -> None:
    with TestClient(create_app()) as c:
        assert c.get("/ready").json()["images"] == 0
        body = c.post("/search", json={"text": "x"}).json()
        assert body["results"] == [] and "nothing is indexed" in body["notice"]


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/static/app.js").status_code == 200


def test_json_roundtrip_of_dates(client: TestClient) -> None:
    body = post_search(client, text="x", k=1, cutoff=False)
    json.dumps(body)
    assert body["results"][0]["taken_at"] is None
