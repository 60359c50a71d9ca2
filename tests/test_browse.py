"""Browsing the collection by date, one photo's details and the filter values (HTTP API)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.server import create_app
from tests.helpers import picture, post_search

#: (file, capture time or None, make, model, GPS, format, size)
PHOTOS = [
    ("a.jpg", "2021:03:04 10:00:00", "Canon", "Canon EOS R5", (48.85, 2.35), "JPEG", (320, 240)),
    ("b.jpg", "2023:07:15 08:30:00", "Apple", "iPhone 12", None, "JPEG", (160, 120)),
    ("c.jpg", "2023:07:01 18:00:00", "Apple", "iPhone 12", None, "JPEG", (120, 160)),
    ("d.png", None, None, None, None, "PNG", (200, 150)),  # file time: 2022-05-20
    ("e.webp", "2022:01:09 12:00:00", "FUJIFILM", "X-T4", None, "WEBP", (640, 480)),
    ("f.jpg", None, None, None, None, "JPEG", (160, 120)),  # file time: 2020-02-02
    ("g.jpg", "2023:12:31 23:59:00", "Canon", "Canon EOS R5", None, "JPEG", (160, 120)),
]
FILE_TIMES = {"d.png": datetime(2022, 5, 20, 12), "f.jpg": datetime(2020, 2, 2, 12)}


def _dms(value: float) -> tuple[float, float, float]:
    d = int(value)
    m = int((value - d) * 60)
    return (float(d), float(m), round((value - d - m / 60) * 3600, 4))


def make_dated_photos(folder: Path) -> None:
    """The PHOTOS above, with their EXIF, and the file times of the undated ones."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, when, make, model, gps, fmt, size) in enumerate(PHOTOS):
        img = picture(seed + 50, size)
        exif = Image.Exif()
        if when:
            exif.get_ifd(0x8769)[0x9003] = when
        if make:
            exif[0x010F], exif[0x0110] = make, model
        if gps:
            g = exif.get_ifd(0x8825)
            g[1], g[2], g[3], g[4] = "N", _dms(gps[0]), "E", _dms(gps[1])
        img.save(folder / name, fmt, exif=exif)
    for name, moment in FILE_TIMES.items():
        t = moment.timestamp()
        os.utime(folder / name, (t, t))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request, tmp_path_factory, tiny_model) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """The photos indexed in a home on each database, served by the app."""
    from api.cli import main

    base = tmp_path_factory.mktemp("browse")
    make_dated_photos(base / "photos")
    config, checkpoint = tiny_model
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "PIXSEARCH_HOME": str(base / "home"),
            "PIXSEARCH_MODEL": str(config),
            "PIXSEARCH_PRETRAINED": str(checkpoint),
            "PIXSEARCH_CAPTIONER": "none",
            "PIXSEARCH_DEDUPE_THRESHOLD": "0.9995",  # random tiny model: see conftest
        }.items():
            mp.setenv(key, value)
        if request.param == "postgresql":
            mp.setenv(
                "PIXSEARCH_DATABASE_URL", str(request.getfixturevalue("pg_server").database())
            )
        try:
            main(["index", str(base / "photos")])
        except SystemExit as exc:
            assert not exc.code
        with TestClient(create_app()) as c:
            c.folder = base / "photos"  # type: ignore[attr-defined]
            yield c


def _names(items: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return [Path(i["path"]).name for i in items]


def test_browse_is_newest_first_with_file_times_for_the_undated(client: TestClient) -> None:
    body = client.get("/images").json()
    assert _names(body["items"]) == ["g.jpg", "b.jpg", "c.jpg", "d.png", "e.webp", "a.jpg", "f.jpg"]
    assert body["total"] == 7
    assert [i["month"] for i in body["items"]][:4] == ["2023-12", "2023-07", "2023-07", "2022-05"]
    d = body["items"][3]
    assert (d["dated_by"], d["taken_at"], d["date"]) == ("file", None, "2022-05-20T12:00:00")
    assert {"month": "2023-07", "count": 2} in body["months"]
    assert body["months"][0] == {"month": "2023-12", "count": 1}
    assert body["undated"] is None and body["notice"] is None

    oldest = client.get("/images", params={"sort": "date", "k": 2, "offset": 1}).json()
    assert _names(oldest["items"]) == ["a.jpg", "e.webp"]
    assert oldest["total"] == 7 and oldest["offset"] == 1


def test_browse_filters_like_search(client: TestClient) -> None:
    canon = client.get("/images", params={"camera": "canon eos"}).json()
    assert _names(canon["items"]) == ["g.jpg", "a.jpg"] and canon["total"] == 2
    pngs = client.get("/images", params={"format": "png"}).json()
    assert _names(pngs["items"]) == ["d.png"]
    big = client.get("/images", params={"min_width": 300}).json()
    assert _names(big["items"]) == ["e.webp", "a.jpg"]


def test_a_date_filter_says_how_many_undated_photos_it_left_out(client: TestClient) -> None:
    body = client.get("/images", params={"taken_after": "2022-01-01"}).json()
    # d.png has no capture date; its file time (2022-05-20) puts it in; f.jpg's (2020) not.
    assert _names(body["items"]) == ["g.jpg", "b.jpg", "c.jpg", "d.png", "e.webp"]
    assert body["undated"] == {"count": 2, "matched": 1, "left_out": 1}
    assert "2 photos have no capture date" in body["notice"]
    assert "1 were left out" in body["notice"]


def test_facets_list_what_the_collection_holds(client: TestClient) -> None:
    f = client.get("/facets").json()
    assert f["total"] == 7 and f["undated"] == 2
    assert f["cameras"] == [
        {"value": "Apple iPhone 12", "count": 2},
        {"value": "Canon EOS R5", "count": 2},
        {"value": "FUJIFILM X-T4", "count": 1},
    ]
    assert {v["value"]: v["count"] for v in f["formats"]} == {"jpeg": 5, "png": 1, "webp": 1}
    assert (f["max_width"], f["max_height"]) == (640, 480)
    assert f["first"] == "2020-02-02T12:00:00" and f["last"] == "2023-12-31T23:59:00"
    assert [m["month"] for m in f["months"]] == [
        "2023-12", "2023-07", "2022-05", "2022-01", "2021-03", "2020-02"
    ]  # fmt: skip
    # Every value offered as a camera filter finds its photos.
    for cam in f["cameras"]:
        assert (
            client.get("/images", params={"camera": cam["value"]}).json()["total"] == cam["count"]
        )


def test_photo_info_has_what_the_lightbox_shows(client: TestClient) -> None:
    items = client.get("/images").json()["items"]
    a = next(i for i in items if i["name"] == "a.jpg")
    info = client.get(f"/images/{a['id']}/info").json()
    assert info == a
    assert info["camera"] == "Canon EOS R5" and info["format"] == "jpeg"
    assert (info["width"], info["height"]) == (320, 240)
    assert info["size"] == (client.folder / "a.jpg").stat().st_size  # type: ignore[attr-defined]
    assert info["folder"] == str(client.folder)  # type: ignore[attr-defined]
    assert info["gps_lat"] == pytest.approx(48.85, abs=1e-4)
    assert info["gps_lon"] == pytest.approx(2.35, abs=1e-4)
    assert client.get("/images/99999/info").status_code == 404


def test_search_sorted_by_date(client: TestClient) -> None:
    body = post_search(client, text="a photo", cutoff=False, sort="-date", k=3)
    dates = [h["date"] for h in body["results"]]
    assert _names(body["results"]) == ["g.jpg", "b.jpg", "c.jpg"], dates
    rest = post_search(client, text="a photo", cutoff=False, sort="-date", k=10, offset=3)
    assert _names(rest["results"]) == ["d.png", "e.webp", "a.jpg", "f.jpg"]
    assert rest["results"][0]["dated_by"] == "file"
    oldest = post_search(client, text="a photo", cutoff=False, sort="date", k=1)
    assert _names(oldest["results"]) == ["f.jpg"]


def test_bad_browse_requests_are_422(client: TestClient) -> None:
    for params in ({"sort": "size"}, {"k": 0}, {"path_prefix": "relative/x"}, {"offset": -1}):
        assert client.get("/images", params=params).status_code == 422, params


def test_upgrading_a_home_dates_the_photos_indexed_before(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import select, text

    from indexer.db import Image, alembic_config, shown_date
    from indexer.home import Home
    from indexer.settings import Settings

    settings = Settings(home=tmp_path / "home", database_url=None)
    home = Home(settings)
    stamp = int(datetime(2021, 6, 1, 12).timestamp() * 1e9)
    with home.session() as s, s.begin():
        for i, taken in enumerate([datetime(2019, 3, 4, 5, 6), None, None]):
            s.add(
                Image(
                    path=f"/p/{i}.jpg", size=1, mtime_ns=stamp + i, content_hash=f"{i:032x}",
                    width=1, height=1, format="jpeg", taken_at=taken, indexed_at=home.now(),
                )
            )  # fmt: skip
    cfg = alembic_config(home.engine.url.render_as_string(hide_password=False))
    with home.engine.begin() as conn:
        cfg.attributes["connection"] = conn  # type: ignore[attr-defined]
        command.downgrade(cfg, "0004")  # type: ignore[arg-type]
    home.engine.dispose()
    with Home(settings).engine.connect() as conn:  # opening it upgrades it again
        rows = conn.execute(select(Image.taken_at, Image.mtime_ns, Image.shown_at)).all()
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0006"
    assert [r.shown_at for r in rows] == [shown_date(t, m) for t, m, _ in rows]
    assert rows[0].shown_at == datetime(2019, 3, 4, 5, 6)
    assert rows[1].shown_at == datetime(2021, 6, 1, 12)  # the file's local time


def test_a_camera_filter_reads_the_camera_index_and_follows_new_photos(
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image as PILImage
    from sqlalchemy import select
    from sqlalchemy.dialects import sqlite

    from indexer.db import Image
    from indexer.filters import Allowed, allowed, allowed_ids, allowed_share, conditions
    from indexer.home import Home
    from indexer.settings import Settings
    from indexer.types import Filters
    from tests.helpers import run_cli

    monkeypatch.delenv("PIXSEARCH_DATABASE_URL", raising=False)  # the `client` fixture's
    folder = tmp_path / "photos"
    make_dated_photos(folder)
    assert run_cli(capsys, "index", str(folder)).code == 0
    with TestClient(create_app()) as c:
        assert c.get("/images", params={"camera": "leica"}).json()["total"] == 0
        before = c.get("/facets").json()
        assert before["total"] == 7 and "Leica Q2" not in [v["value"] for v in before["cameras"]]
        # A camera new to the collection: the running server's filter finds it at once.
        exif = PILImage.Exif()
        exif[0x010F], exif[0x0110] = "Leica", "Q2"
        picture(99).save(folder / "new.jpg", exif=exif)
        assert run_cli(capsys, "index", str(folder)).code == 0
        assert _names(c.get("/images", params={"camera": "LEICA q"}).json()["items"]) == ["new.jpg"]
        after = c.get("/facets").json()  # read again: the collection changed since
        assert after["total"] == 8 and {"value": "Leica Q2", "count": 1} in after["cameras"]
        body = post_search(c, text="a photo", cutoff=False, filters={"camera": "leica"})
        assert _names(body["results"]) == ["new.jpg"]
        # Make and model both, or either one; a '%' is a character, not a wildcard.
        assert c.get("/images", params={"camera": "canon eos r5"}).json()["total"] == 2
        assert c.get("/images", params={"camera": "iphone"}).json()["total"] == 2
        assert c.get("/images", params={"camera": "%"}).json()["total"] == 0

    # A filter broader than the ids a search may read from the database: the candidates of
    # an unfiltered search are tested against it instead, with the same answer.
    queries = [
        {"camera": "canon"},
        {"format": "jpeg"},
        {"taken_after": "2021-01-01"},
        {"camera": "e", "min_width": 100},
    ]
    answers = []
    for limit in ("250000", "1"):
        monkeypatch.setenv("PIXSEARCH_FILTER_IDS_LIMIT", limit)
        with TestClient(create_app()) as c:
            answers.append(
                [
                    [h["id"] for h in post_search(c, text="a photo", k=3, filters=f)["results"]]
                    for f in queries
                ]
            )
    assert answers[0] == answers[1] and all(answers[0]), answers

    # The rows are found through the (make, model) index, never by reading the whole table.
    home = Home(Settings())
    # A filter too broad to read every id of tests candidates in SQL, with the same answer.
    every = np.arange(0, 12, dtype=np.int64)[::-1]
    for f in (
        Filters(camera="canon"),
        Filters(format="png"),
        Filters(taken_after=date(2022, 1, 1)),
        Filters(camera="apple", min_width=100),
        Filters(camera="nobody"),
    ):
        ids = allowed_ids(home, f)
        assert ids is not None and allowed_ids(home, f, limit=len(ids)) is not None
        if len(ids):
            assert allowed_ids(home, f, limit=len(ids) - 1) is None
        by_ids = Allowed(home, f, ids).among(every)
        assert Allowed(home, f, None).among(every).tolist() == by_ids.tolist()
        assert sorted(by_ids.tolist()) == ids.tolist()
        # The share a broad filter allows, estimated from ids drawn over the id range: here
        # the draws cover every photo, so it is exact; it sizes the first over-fetch.
        assert allowed_share(home, f) == pytest.approx(len(ids) / 8)
    # A broad filter's share is kept until the collection changes, then estimated again.
    canon = Filters(camera="canon")
    assert allowed(home, canon, 1).share == allowed(home, canon, 1).share == pytest.approx(2 / 8)
    exif = PILImage.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS R5"
    picture(98).save(folder / "canon3.jpg", exif=exif)
    assert run_cli(capsys, "index", str(folder)).code == 0
    assert allowed(home, canon, 1).share == pytest.approx(3 / 9)
    stmt = select(Image.id).where(*conditions(Filters(camera="canon"), home))
    sql = str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with home.engine.connect() as conn:
        plan = [str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    assert any("ix_images_camera" in step for step in plan), plan
    assert not any(step.startswith("SCAN") for step in plan), plan
