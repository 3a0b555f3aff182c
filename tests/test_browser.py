"""A real browser (Debian's Chromium, driven by Playwright) shows our `<picture>` tags as intended.

The api runs as a real server on loopback and serves the outputs from its /files route; the page
holding the tag comes from a second tiny HTTP server, so the browser does what it does on a site:
pick a `<source>` by type, a candidate by `sizes` and device pixel ratio, fetch it and decode it.

Chromium comes from `apt-get install chromium` (scripts/test does it where it can); without it, or
without the playwright package, the tests skip with the reason. Playwright's own browser download
is never used: it cannot work on a machine without internet access.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CORPUS, Tenant, make_pipeline, wait_settled
from liveserver import running_api

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google's hosts, which this
# closed network refuses; --no-sandbox because tests run as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1000, "height": 800}
LAYOUT_WIDTH = 600  # the img's CSS width, and the `sizes` the page announces
PROFILE = {
    "type": "cross",
    "formats": [
        {"format": "avif", "quality": 50, "effort": 0},
        {"format": "webp", "quality": 70, "effort": 0},
        {"format": "jpg", "condition": {"type": "must", "formats": ["jpg"]}},
        {"format": "gif", "condition": {"type": "must", "formats": ["gif"]}},
    ],
    "sizes": [{"width": 320}, {"width": 640}, {"width": 1280}],
}
IMG = "document.querySelector('picture img')"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def live_api(env: dict[str, str]) -> Iterator[str]:
    with running_api(env) as url:
        yield url


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (scripts/test apt-get installs it as root)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (it is in the dev extras)")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@contextmanager
def serving(pages: dict[str, str]) -> Iterator[str]:
    """A static HTTP server on loopback for `pages` (path -> HTML); yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path)
            if body is None:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest's output for failures

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def page_html(picture_tag: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><style>"
        f"body{{margin:0}} img{{display:block;width:{LAYOUT_WIDTH}px;height:auto}}"
        f"</style></head><body>{picture_tag}</body></html>"
    )


async def publish(
    client: httpx.AsyncClient, live: str, tenant: Tenant, pipe: dict[str, Any], name: str
) -> tuple[str, dict[str, Any]]:
    """Upload a corpus file through the live api, wait for its outputs; the tag and its JSON form."""
    async with httpx.AsyncClient(base_url=live, headers=tenant.headers(), timeout=30) as http:
        r = await http.post(
            f"/api/projects/{tenant.project}/quick_upload",
            params={"upload_profile": pipe["short_id"], "filename": name, "alt_text": name},
            content=(CORPUS / name).read_bytes(),
        )
        assert r.status_code == 201, r.text
        image_id = r.json()["id"]
        done = await wait_settled(client, tenant, image_id)
        assert done["status"] == "ready", done
        params = {"sizes": f"{LAYOUT_WIDTH}px"}
        tag = await http.get(f"/api/images/{image_id}/picture", params=params)
        data = await http.get(f"/api/images/{image_id}/picture", params={**params, "format": "json"})
    assert tag.status_code == data.status_code == 200, (tag.text, data.text)
    return tag.text, data.json()


async def open_page(browser: Any, url: str, scale: float) -> Any:
    """A page in a fresh context (its own cache) once its image has loaded; the caller closes it."""
    context = await browser.new_context(viewport=VIEWPORT, device_scale_factor=scale)
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_function(f"() => {IMG} && {IMG}.complete && {IMG}.currentSrc !== ''", timeout=20_000)
    return page


async def shown(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(
        f"() => ({{src: {IMG}.currentSrc, naturalWidth: {IMG}.naturalWidth,"
        f" layoutWidth: {IMG}.getBoundingClientRect().width}})"
    )
    return result


async def decoded_width(page: Any, url: str) -> int:
    """The pixel width Chromium decodes the file at `url` to, without any srcset density correction."""
    width: int = await page.evaluate(
        "async (url) => { const i = new Image(); i.src = url; await i.decode(); return i.naturalWidth; }", url
    )
    return width


def candidate_urls(picture: dict[str, Any], mime: str) -> dict[int, str]:
    source = next(s for s in picture["sources"] if s["type"] == mime)
    return {c["width"]: c["url"] for c in source["candidates"]}


async def test_picks_avif_nearest_the_layout_width(client, tenant, worker, live_api, browser):
    pipe = await make_pipeline(client, tenant, PROFILE, files_url=f"{live_api}/files")
    tag, picture = await publish(client, live_api, tenant, pipe, "flowers.jpeg")
    avif = candidate_urls(picture, "image/avif")
    assert sorted(avif) == [320, 640, 1280]
    assert all(url.startswith(f"{live_api}/files/") for url in avif.values())

    with serving({"/": page_html(tag)}) as site:
        # At DPR 1 a 600 px slot needs 600 device pixels: 640 is the smallest candidate that covers it.
        for scale, expected in ((1, 640), (2, 1280)):
            page = await open_page(browser, f"{site}/", scale)
            try:
                seen = await shown(page)
                decoded = await decoded_width(page, seen["src"])
            finally:
                await page.context.close()
            assert seen["layoutWidth"] == LAYOUT_WIDTH, seen
            assert seen["src"] == avif[expected], (scale, seen, avif)
            # naturalWidth of a `w` candidate is density-corrected (640 px at 640/600 density = 600).
            assert abs(seen["naturalWidth"] - LAYOUT_WIDTH) <= 1, seen
            assert decoded == expected, (seen, decoded)


async def test_animated_gif_shows_animated_webp(client, tenant, worker, live_api, browser):
    pipe = await make_pipeline(client, tenant, PROFILE, files_url=f"{live_api}/files")
    tag, picture = await publish(client, live_api, tenant, pipe, "animated-loop-3.gif")
    # AVIF cannot animate, so the planner skips it; WebP is the first source the browser can use.
    assert [s["type"] for s in picture["sources"]] == ["image/webp"], picture
    assert picture["img"]["format"] == "gif"

    with serving({"/": page_html(tag)}) as site:
        page = await open_page(browser, f"{site}/", 1)
        try:
            seen = await shown(page)
            assert seen["src"].endswith(".webp"), seen
            assert seen["src"] in candidate_urls(picture, "image/webp").values(), seen
            assert seen["naturalWidth"] > 0, seen
            assert await animates(page.locator("picture img")), "the image never changed on screen"
        finally:
            await page.context.close()


async def animates(element: Any, interval: float = 0.5, within: float = 8.0) -> bool:
    """Whether a screenshot of the element ever differs from the first one.

    animated-loop-3.gif holds each frame for 3 s, so two screenshots 500 ms apart usually show the
    same frame; screenshots every 500 ms for up to 8 s must catch at least one frame change.
    """
    first = await element.screenshot()
    for _ in range(int(within / interval)):
        await asyncio.sleep(interval)
        if await element.screenshot() != first:
            return True
    return False
