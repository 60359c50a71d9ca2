"""The web page in a real browser (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import run_cli, serve_in_thread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained tiny models and 120 shapes pictures of a seed training never saw."""
    from tests.assets.tiny_models import (
        make_synthetic_dataset,
        materialize_tiny_captioner,
        materialize_tiny_clip,
    )

    base = tmp_path_factory.mktemp("browser")
    config, checkpoint = materialize_tiny_clip(base / "clip")
    captioner = materialize_tiny_captioner(base / "captioner")
    data = make_synthetic_dataset(base / "shapes", seed=4242, count=120)
    return {"config": config, "checkpoint": checkpoint, "captioner": captioner, "data": data}


@pytest.fixture
def server(env, shapes, monkeypatch, capsys) -> Iterator[str]:
    monkeypatch.setenv("PIXSEARCH_MODEL", str(shapes["config"]))
    monkeypatch.setenv("PIXSEARCH_PRETRAINED", str(shapes["checkpoint"]))
    monkeypatch.setenv("PIXSEARCH_CAPTIONER", str(shapes["captioner"]))
    monkeypatch.delenv("PIXSEARCH_DEDUPE_THRESHOLD")  # the defaults a user gets
    assert run_cli(capsys, "index", str(shapes["data"] / "images")).code == 0
    with serve_in_thread() as url:
        yield url


@pytest.fixture
def page(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(server + "/")
        yield pg
        browser.close()
        assert errors == [], errors


def _truth(shapes) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    import csv

    with open(shapes["data"] / "attributes.csv", newline="") as fh:
        return {Path(r["path"]).name: r for r in csv.DictReader(fh)}


def _attrs_of_hits(page, base: str, truth) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """Each shown card's picture, looked up by its id through the API's own answer."""
    out = []
    for card_id in page.locator(".hit").evaluate_all("cs => cs.map(c => c.dataset.id)"):
        res = page.request.get(f"{base}/images/{card_id}/similar?k=1&cutoff=false")
        out.append(truth[Path(res.json()["results"][0]["path"]).name])
    return out


def test_query_more_like_this_and_upload(page, shapes, server: str) -> None:
    from playwright.sync_api import expect

    truth = _truth(shapes)
    expect(page.locator("#image-count")).to_contain_text("120")
    import csv

    with open(shapes["data"] / "captions.csv", newline="") as fh:
        wanted = truth[Path(next(csv.DictReader(fh))["path"]).name]
    page.fill(
        "#q",
        f"a {wanted['size']} {wanted['colour']} {wanted['shape']} on a "
        f"{wanted['background']} background",
    )
    page.press("#q", "Enter")
    hits = page.locator(".hit")
    expect(hits.first).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.hit img')].some(i => i.naturalWidth > 0)"
    )
    shown = _attrs_of_hits(page, server, truth)
    # What the words describe comes first: that very picture (the only one so described).
    assert shown[0] == wanted, shown[:3]

    # "More like this" on the first hit: that picture first, then mostly the same shape or
    # colour (chance: a fifth share the shape, an eighth the colour).
    first = hits.first.get_attribute("data-id")
    hits.first.locator(".more-like-this").click()
    expect(page.locator(".hit").first).to_have_attribute("data-id", first)
    expect(page.locator(".hit").nth(5)).to_be_visible()
    similar = _attrs_of_hits(page, server, truth)
    alike = sum(
        s["shape"] == wanted["shape"] or s["colour"] == wanted["colour"] for s in similar[1:]
    )
    assert alike >= 0.5 * (len(similar) - 1), similar

    # Upload a picture from disk: its indexed original is the first hit, its likes follow.
    upload = sorted((shapes["data"] / "images").iterdir())[7]
    page.set_input_files("#file-input", str(upload))
    expect(page.locator("#query-image")).to_be_visible()
    expect(page.locator(".hit").first).not_to_have_attribute("data-id", first)
    top_id = page.locator(".hit").first.get_attribute("data-id")
    assert page.request.get(f"{server}/images/{top_id}").body() == upload.read_bytes()
    assert page.locator(".hit").count() >= 5


def test_absent_things_offer_the_closest_anyway(page, server: str) -> None:
    from playwright.sync_api import expect

    # A query the API answers with nothing because of the cut-off (most such do).
    subjects = ["a giraffe eating leaves", "a dog", "a bowl of soup", "a city skyline", "a bus"]
    query = next(
        q
        for q in subjects
        if page.request.post(f"{server}/search", data={"text": q}).json()["cut_off"]
    )
    page.fill("#q", query)
    page.press("#q", "Enter")
    expect(page.locator("#show-closest")).to_be_visible()
    expect(page.locator("#empty-title")).to_contain_text(query)
    assert not any(ch.isdigit() for ch in page.locator("#status").inner_text())
    page.click("#show-closest")
    expect(page.locator(".hit").first).to_be_visible()
    expect(page.locator("#status")).to_contain_text("closest")


def test_folder_filter(page, shapes) -> None:
    from playwright.sync_api import expect

    folder = shapes["data"] / "images"
    page.fill("#folder", str(folder))
    page.fill("#q", "a green square")
    page.press("#q", "Enter")
    expect(page.locator(".hit").first).to_be_visible()
    page.fill("#folder", str(shapes["data"] / "elsewhere"))
    page.press("#q", "Enter")
    expect(page.locator("#empty-state")).to_be_visible()
    expect(page.locator(".hit")).to_have_count(0)


@pytest.mark.parametrize("docs", ["/docs", "/redoc"])
def test_api_docs_render_without_network(server: str, docs: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page()
        outside: list[str] = []

        def only_this_server(route: object) -> None:
            url = route.request.url  # type: ignore[attr-defined]
            if url.startswith(server + "/"):
                route.continue_()  # type: ignore[attr-defined]
            else:
                outside.append(url)
                route.abort()  # type: ignore[attr-defined]

        pg.route("**/*", only_this_server)
        pg.goto(server + docs)
        expect(pg.get_by_text("/search/image").first).to_be_visible(timeout=30_000)
        browser.close()
    # ReDoc's "powered by" badge is an image on its CDN: offline it is merely not shown.
    badge = ["https://cdn.redoc.ly/redoc/logo-mini.svg"] if docs == "/redoc" else []
    assert [u for u in outside if u not in badge] == [], outside
