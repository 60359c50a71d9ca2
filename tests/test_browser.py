"""The web page in a real browser (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import make_photos, run_cli

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(env, photos: Path, capsys) -> Iterator[str]:
    import uvicorn

    from api.server import create_app

    make_photos(photos / "2024", 6, start=50)
    assert run_cli(capsys, "index", str(photos)).code == 0
    port = _free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


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


def test_query_more_like_this_and_upload(page, photos: Path) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#image-count")).to_contain_text("18")
    page.fill("#q", "a green square")
    page.press("#q", "Enter")
    hits = page.locator(".hit")
    expect(hits.first).to_be_visible()
    assert hits.count() >= 1
    # Thumbnails really load.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.hit img')].some(i => i.naturalWidth > 0)"
    )

    # "More like this" on the third hit: that photo comes back first.
    third = hits.nth(min(2, hits.count() - 1))
    wanted = third.get_attribute("data-id")
    third.locator(".more-like-this").click()
    expect(page.locator(".hit").first).to_have_attribute("data-id", wanted)

    # Upload a picture from disk: its indexed original becomes the best hit.
    upload = photos / ("img_0007.jpg" if wanted != "8" else "img_0003.jpg")
    base = page.url.split("?")[0].rstrip("/")
    page.set_input_files("#file-input", str(upload))
    expect(page.locator("#query-image")).to_be_visible()
    expect(page.locator(".hit").first).not_to_have_attribute("data-id", wanted)
    top_id = page.locator(".hit").first.get_attribute("data-id")
    assert page.request.get(f"{base}/images/{top_id}").body() == upload.read_bytes()


def test_folder_filter(page, photos: Path) -> None:
    from playwright.sync_api import expect

    page.fill("#folder", str(photos / "2024"))
    page.fill("#q", "anything at all")
    page.press("#q", "Enter")
    expect(page.locator(".hit").first).to_be_visible()
    page.wait_for_timeout(300)
    cards = page.locator(".hit")
    assert 1 <= cards.count() <= 6
    ids = [cards.nth(i).get_attribute("data-id") for i in range(cards.count())]
    for i in ids:
        info = page.request.get(page.url.split("?")[0].rstrip("/") + f"/images/{i}")
        assert info.ok


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
