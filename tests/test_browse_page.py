"""Browsing the demo collection in a real browser (Debian's Chromium, driven by Playwright).

What a person sees: the collection newest first under month headers, a lightbox that fits
the photo and tells its date, camera, size, folder and place, the camera filter, the phone
layout and dark mode. Screenshots of each view are kept in $PIXSEARCH_ARTIFACTS (default
test-artifacts/, not committed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from indexer.browse import camera_label
from indexer.demo import DemoPhoto, make_demo_photos, plan_demo
from tests.helpers import ROOT, serve_in_thread
from tests.test_browser import ARGS, CHROMIUM

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
    reason="chromium is not installed",
)

DEMO_SIZE = 300


def _when(p: DemoPhoto) -> datetime:
    return p.taken_at or p.file_time


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("PIXSEARCH_ARTIFACTS") or ROOT / "test-artifacts") / "browse"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The demo collection indexed with the trained tiny models, served by a real server."""

    from api.cli import main
    from tests.assets.tiny_models import materialize_tiny_captioner, materialize_tiny_clip

    base = tmp_path_factory.mktemp("browse-page")
    make_demo_photos(base / "photos", n=DEMO_SIZE, seed=0)
    config, checkpoint = materialize_tiny_clip(base / "clip")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "PIXSEARCH_HOME": str(base / "home"),
            "PIXSEARCH_MODEL": str(config),
            "PIXSEARCH_PRETRAINED": str(checkpoint),
            "PIXSEARCH_CAPTIONER": str(materialize_tiny_captioner(base / "captioner")),
        }.items():
            mp.setenv(key, value)
        mp.delenv("PIXSEARCH_DEDUPE_THRESHOLD", raising=False)  # the defaults a user gets
        try:
            main(["index", str(base / "photos")])
        except SystemExit as exc:
            assert not exc.code
        plan = plan_demo(DEMO_SIZE, seed=0)
        with serve_in_thread() as url:
            yield {"url": f"{url}/", "plan": plan, "folder": base / "photos"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    # A busy 2-core machine (the suite runs beside other work) can take more than the
    # default 5 s to page in a few hundred thumbnails.
    expect.set_options(timeout=20_000)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            yield b
            b.close()
    finally:
        expect.set_options(timeout=5_000)


def _open(browser: Any, url: str, **options: Any) -> Any:
    """A new page at `url` (US English, so month names read as expected), its errors kept."""
    ctx = browser.new_context(locale="en-US", timezone_id="UTC", **options)
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(url)
    pg.wait_for_selector(".hit img.loaded")
    return pg


def _close(pg: Any) -> None:
    errors = pg.errors
    pg.context.close()
    assert errors == [], errors


def _card_names(pg: Any) -> list[str]:
    return pg.locator(".hit a.thumb").evaluate_all("as => as.map(a => a.title.split(' · ')[0])")  # type: ignore[no-any-return]


def test_the_collection_newest_first_by_month(browser, demo, artifacts: Path) -> None:
    from playwright.sync_api import expect

    plan: list[DemoPhoto] = demo["plan"]
    newest = sorted(plan, key=_when, reverse=True)
    pg = _open(browser, demo["url"], viewport={"width": 1280, "height": 860})
    expect(pg.locator("#status")).to_contain_text(f"{DEMO_SIZE} photos")
    names = _card_names(pg)
    assert names[:40] == [Path(p.path).name for p in newest[:40]]
    first = _when(newest[0])
    header = pg.locator(".month-header").first
    expect(header).to_contain_text(first.strftime("%B %Y"))
    months = pg.locator(".month-header").evaluate_all("hs => hs.map(h => h.dataset.month)")
    assert months == sorted(set(months), reverse=True)  # one header per month, newest first
    pg.screenshot(path=str(artifacts / "browse.png"))

    # Scrolled down, the month of the photos at the top of the screen stays pinned there.
    pg.mouse.wheel(0, 2500)
    pg.wait_for_timeout(400)
    pinned = pg.evaluate(
        """() => {
          const top = parseFloat(getComputedStyle(document.documentElement)
                                   .getPropertyValue('--sticky-top')) || 0;
          const h = document.elementFromPoint(400, top + 8).closest('.month-header');
          const month = h.closest('.month').getBoundingClientRect();
          return {header: h.getBoundingClientRect().top - top, start: month.top - top,
                  end: month.bottom - top, scrolled: scrollY};
        }"""
    )
    # The header sits at the top although its month began above the screen.
    assert pinned["scrolled"] > 2000 and abs(pinned["header"]) < 2, pinned
    assert pinned["start"] < 0 < pinned["end"], pinned
    pg.screenshot(path=str(artifacts / "browse-scrolled.png"))

    # Infinite scroll brings every photo, the undated ones too (dated by file time).
    deadline = time.monotonic() + 60
    while pg.locator(".hit").count() < DEMO_SIZE and time.monotonic() < deadline:
        pg.mouse.wheel(0, 20_000)
        pg.wait_for_timeout(300)
    expect(pg.locator(".hit")).to_have_count(DEMO_SIZE)
    expect(pg.locator("#end-note")).to_contain_text(f"{DEMO_SIZE} photos")
    assert sorted(_card_names(pg)) == sorted(Path(p.path).name for p in plan)

    # The jumper goes straight to a month, with a way back to the newest.
    target = sorted(plan, key=_when)[len(plan) // 3]
    month = _when(target).strftime("%Y-%m")
    pg.select_option("#jump", month)
    expect(pg.locator(".month-header").first).to_have_attribute("data-month", month)
    expect(pg.locator("#newer")).to_be_visible()
    in_month = [p for p in newest if _when(p).strftime("%Y-%m") == month]
    assert _card_names(pg)[0] == Path(in_month[0].path).name
    pg.click("#newer")
    expect(pg.locator(".month-header").first).to_have_attribute(
        "data-month", first.strftime("%Y-%m")
    )
    # Oldest first: the same collection the other way round.
    pg.select_option("#sort", "date")
    oldest = _when(newest[-1]).strftime("%Y-%m")
    expect(pg.locator(".month-header").first).to_have_attribute("data-month", oldest)
    expect(pg.locator("#status")).to_contain_text("oldest first")
    assert _card_names(pg)[0] == Path(newest[-1].path).name
    _close(pg)


def test_lightbox_fits_and_describes_the_photo(browser, demo, artifacts: Path) -> None:
    from playwright.sync_api import expect

    plan: list[DemoPhoto] = demo["plan"]
    newest = sorted(plan, key=_when, reverse=True)
    pg = _open(browser, demo["url"], viewport={"width": 1280, "height": 800})
    # The newest photo with a camera and a GPS position, among the first page's.
    photo = next(p for p in newest[:60] if p.gps and p.make and p.taken_at)
    index = [Path(p.path).name for p in newest].index(Path(photo.path).name)
    pg.locator(".hit a.thumb").nth(index).click()
    lb = pg.locator("#lightbox")
    expect(lb).to_be_visible()
    meta = pg.locator("#lb-meta")
    expect(pg.locator("#lb-title")).to_have_text(Path(photo.path).name)
    camera = meta.locator("[data-testid=lb-camera]")
    expect(camera).to_contain_text(photo.model or "")
    assert (photo.make or "").split()[0].lower() in camera.inner_text().lower()
    assert photo.taken_at is not None
    expect(meta.locator("[data-testid=lb-date]")).to_contain_text(
        f"{photo.taken_at:%b} {photo.taken_at.day}, {photo.taken_at.year}"
    )
    expect(meta.locator("[data-testid=lb-dims]")).to_have_text(f"{photo.width} × {photo.height}")
    size = (demo["folder"] / photo.path).stat().st_size
    kb = size / 1024
    expect(meta.locator("[data-testid=lb-file]")).to_contain_text(
        f"{kb:.1f} KB" if kb < 10 else f"{kb:.0f} KB"
    )
    expect(meta.locator("[data-testid=lb-folder]")).to_have_text(
        str((demo["folder"] / photo.path).parent)
    )
    gps = meta.locator("[data-testid=lb-gps] a")
    expect(gps).to_contain_text(f"{photo.gps[0]:.5f}"[:-1])
    assert "openstreetmap.org" in (gps.get_attribute("href") or "")
    download = pg.locator("#lb-download")
    assert download.get_attribute("download") == Path(photo.path).name
    assert (
        pg.request.get(demo["url"] + download.get_attribute("href")[1:]).body()
        == (demo["folder"] / photo.path).read_bytes()
    )

    def box() -> dict[str, float]:
        pg.wait_for_function(
            "() => { const i = document.getElementById('lb-img');"
            " return i.complete && /\\/images\\/\\d+$/.test(i.src) && i.naturalWidth > 0 }"
        )
        return pg.evaluate(  # type: ignore[no-any-return]
            """() => { const i = document.getElementById('lb-img');
                       const r = i.getBoundingClientRect();
                       return {w: r.width, h: r.height, top: r.top, left: r.left,
                               nw: i.naturalWidth, nh: i.naturalHeight,
                               vw: innerWidth, vh: innerHeight} }"""
        )

    b = box()
    # Fitted: inside the window, never larger than the photo itself, never cropped.
    assert b["w"] <= b["vw"] and b["h"] <= b["vh"] and b["top"] >= 0 and b["left"] >= 0, b
    assert b["w"] <= b["nw"] and b["h"] <= b["nh"], b
    assert abs(b["w"] / b["h"] - b["nw"] / b["nh"]) < 0.02, b
    assert max(b["w"] / b["nw"], b["h"] / b["nh"]) > 0.5, b  # and not a stamp in the dark
    pg.screenshot(path=str(artifacts / "lightbox.png"))

    # The arrow key moves to the next photo.
    pg.keyboard.press("ArrowRight")
    expect(pg.locator("#lb-title")).to_have_text(Path(newest[index + 1].path).name)

    # A photo smaller than the window is shown at its own size, not blown up.
    small = next(i for i, p in enumerate(newest[:90]) if p.width <= 512 and p.height <= 512)
    pg.keyboard.press("Escape")
    pg.locator(".hit a.thumb").nth(small).click()
    b = box()
    assert (round(b["w"]), round(b["h"])) == (b["nw"], b["nh"]), b

    # "More like this" from the lightbox: that photo leads the answer.
    small_id = pg.locator(".hit").nth(small).get_attribute("data-id")
    pg.click("#lb-similar")
    expect(lb).to_be_hidden()
    expect(pg.locator(".hit").first).to_have_attribute("data-id", small_id or "")
    _close(pg)


def test_camera_filter_and_undated_notice(browser, demo, artifacts: Path) -> None:
    from playwright.sync_api import expect

    plan: list[DemoPhoto] = demo["plan"]
    pg = _open(browser, demo["url"], viewport={"width": 1280, "height": 860})
    # The camera list is the collection's own.
    offered = pg.locator("#camera option").evaluate_all("os => os.map(o => o.value)")
    assert sorted(v for v in offered if v) == sorted(
        {camera_label(p.make, p.model) for p in plan if p.make}
    )
    canon = [p for p in plan if p.model == "Canon EOS R6"]
    pg.select_option("#camera", "Canon EOS R6")
    expect(pg.locator("#status")).to_have_text(f"{len(canon)} photos · newest first")
    expect(pg.locator(".hit")).to_have_count(len(canon))
    assert sorted(_card_names(pg)) == sorted(Path(p.path).name for p in canon)
    expect(pg.locator("#filters-count")).to_have_text("1")
    pg.screenshot(path=str(artifacts / "camera-filter.png"))

    # A date filter: photos without a capture date are dated by file time, and the page
    # says so and how many of them it left out.
    pg.select_option("#camera", "")
    pg.fill("#taken-after", "2022-01-01")
    undated = [p for p in plan if p.taken_at is None]
    outside = sum(p.file_time < datetime(2022, 1, 1) for p in undated)
    note = pg.locator("#undated-note")
    expect(note).to_contain_text(f"{len(undated)} photos have no capture date")
    expect(note).to_contain_text(f"{outside} were left out")
    allowed = sum(_when(p) >= datetime(2022, 1, 1) for p in plan)
    expect(pg.locator("#status")).to_have_text(f"{allowed} photos · newest first")

    # Search results sorted newest first come under month headers too.
    pg.fill("#taken-after", "")
    pg.fill("#q", _search_with_many_hits(pg, demo["url"]))
    pg.press("#q", "Enter")
    expect(pg.locator("#sort-tool")).to_be_visible()
    expect(pg.locator(".month-header")).to_have_count(0)  # best match first: no months
    pg.select_option("#sort", "-date")
    expect(pg.locator(".month-header").first).to_be_visible()
    months = pg.locator(".month-header").evaluate_all("hs => hs.map(h => h.dataset.month)")
    assert len(months) >= 2 and months == sorted(set(months), reverse=True), months
    pg.screenshot(path=str(artifacts / "search-by-date.png"))
    _close(pg)


def _search_with_many_hits(pg: Any, url: str) -> str:
    """A query the API answers with at least 12 photos at the defaults."""
    for text in ("a red shape", "a blue background", "a red thing", "something green"):
        res = pg.request.post(url + "search", data={"text": text, "k": 40}).json()
        if len(res["results"]) >= 12:
            return text
    raise AssertionError("no query finds 12 photos in the demo collection")


def test_phone_layout_shows_nine_photos_after_a_search(browser, demo, artifacts: Path) -> None:
    from playwright.sync_api import expect

    pg = _open(
        browser,
        demo["url"],
        viewport={"width": 390, "height": 844},
        device_scale_factor=3,
        is_mobile=True,
        has_touch=True,
    )
    expect(pg.locator("#filters-btn")).to_be_visible()
    expect(pg.locator("#camera")).to_be_hidden()  # folded away
    pg.screenshot(path=str(artifacts / "phone-browse.png"))
    pg.fill("#q", _search_with_many_hits(pg, demo["url"]))
    pg.press("#q", "Enter")
    expect(pg.locator("#status")).to_contain_text("photos")
    pg.wait_for_function("() => !document.querySelector('#results.stale, .skeleton')")
    # Nine photos (three rows) or more on the screen, their pictures loaded.
    shown = """() => [...document.querySelectorAll('.hit a.thumb')].filter(a => {
               const r = a.getBoundingClientRect(), img = a.querySelector('img');
               return r.width > 50 && r.top >= 0 && r.bottom <= innerHeight
                      && img.complete && img.naturalWidth > 0;
           }).length"""
    pg.wait_for_function(f"() => ({shown})() >= 9")
    pg.wait_for_timeout(300)  # the pictures' fade-in, for the screenshot
    pg.screenshot(path=str(artifacts / "phone-search.png"))
    expect(pg.locator(".hit .score").first).to_be_hidden()  # scores only when asked for
    pg.click("#filters-btn")
    expect(pg.locator("#camera")).to_be_visible()
    pg.screenshot(path=str(artifacts / "phone-filters.png"))
    pg.locator("#scores-toggle").check()
    expect(pg.locator(".hit .score").first).to_be_visible()
    _close(pg)


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_colour_scheme_follows_the_system(browser, demo, artifacts: Path, scheme: str) -> None:
    pg = _open(browser, demo["url"], viewport={"width": 1280, "height": 860}, color_scheme=scheme)

    def luminance(css: str) -> float:
        r, g, b = (int(x) for x in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
        return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255

    bg, fg = pg.evaluate(
        "() => [getComputedStyle(document.body).backgroundColor,"
        " getComputedStyle(document.body).color]"
    )
    header = pg.evaluate("() => getComputedStyle(document.querySelector('.month-header')).color")
    if scheme == "dark":
        assert luminance(bg) < 0.15 and luminance(fg) > 0.8 and luminance(header) > 0.8
    else:
        assert luminance(bg) > 0.9 and luminance(fg) < 0.2 and luminance(header) < 0.2
    pg.screenshot(path=str(artifacts / f"browse-{scheme}.png"))
    _close(pg)
