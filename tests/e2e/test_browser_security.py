"""Issue 34 in a real browser (headless Chromium): a stored crop that is also an HTML page (a polyglot) is only
ever shown as an image, and the pages that hold the API key (/ui, /docs) refuse to load inside a frame of another
origin (a framing page served from a second loopback port: same host, another origin).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.browser import OfflinePage
from tests.support.images import player_jpeg
from tests.support.live_server import LiveServer

pytestmark = pytest.mark.slow

HTML_TAIL = (
    b"<!doctype html><html><head><title>PWNED</title></head><body><h1 id='pwned'>rendered as HTML</h1>"
    b"<script>window.pwned = true; document.title = 'PWNED by script';</script></body></html>"
)
FRAMABLE = "a page that allows framing"


class _FramingHandler(BaseHTTPRequestHandler):
    """/frame?src=URL: a page framing URL; /ok: a page that may be framed (the control)."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/frame":
            src = parse_qs(parts.query)["src"][0]
            body = f'<!doctype html><title>framer</title><iframe name="target" src="{escape(src)}"></iframe>'
        elif parts.path == "/ok":
            body = f"<!doctype html><title>ok</title><p id='ok'>{FRAMABLE}</p>"
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def other_origin() -> Iterator[str]:
    """http://127.0.0.1:<another port>: same host as the service, another origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FramingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_polyglot_crop_is_only_ever_shown_as_an_image(shared_server: LiveServer, offline_page: OfflinePage) -> None:
    jpeg = player_jpeg(5)
    assert jpeg.endswith(b"\xff\xd9")  # HTML_TAIL goes after the JPEG's end-of-image marker
    polyglot = jpeg + HTML_TAIL
    response = httpx.post(
        f"{shared_server.url}/gallery",
        files=[("files", ("crop.html", polyglot, "text/html"))],
        data={"collection": "polyglot", "labels": ["p5"]},
        timeout=60,
    )
    assert response.status_code == 201, response.text  # a valid JPEG: accepted, and kept byte for byte
    item_id = response.json()["items"][0]["id"]
    url = f"{shared_server.url}/gallery/{item_id}/image"
    assert httpx.get(url, timeout=30).content == polyglot

    page = offline_page.page
    with page.expect_response(url) as answer:
        page.goto(url)
    assert answer.value.headers["content-type"] == "image/jpeg"
    assert page.evaluate("document.contentType") == "image/jpeg"
    assert page.evaluate("window.pwned === undefined")
    assert "PWNED" not in page.title()
    assert page.locator("#pwned").count() == 0
    # Chromium's image document: one <img> showing the decoded crop (64x128), nothing else.
    image = page.locator("img")
    assert image.count() == 1
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 128]
    assert offline_page.blocked == []


def _framed(offline_page: OfflinePage, framer: str, src: str) -> Any:
    page = offline_page.page
    page.goto(f"{framer}/frame?src={httpx.QueryParams({'x': src})['x']}", wait_until="load")
    frame = page.frame(name="target")
    assert frame is not None
    return frame


@pytest.mark.parametrize(("path", "marker"), [("/ui", "#view-collections"), ("/docs", "#swagger-ui")])
def test_key_holding_pages_refuse_to_load_in_a_frame_of_another_origin(
    shared_server: LiveServer, offline_page: OfflinePage, other_origin: str, path: str, marker: str
) -> None:
    # Control: the same framing page does show a framable page, so an empty frame below means "refused".
    control = _framed(offline_page, other_origin, f"{other_origin}/ok")
    assert control.locator("#ok").inner_text() == FRAMABLE

    frame = _framed(offline_page, other_origin, f"{shared_server.url}{path}")
    assert frame.locator(marker).count() == 0, f"{path} loaded inside a frame of {other_origin}"
    refusals = [e for e in offline_page.console_errors if "frame-ancestors" in e or "X-Frame-Options" in e]
    assert refusals, offline_page.console_errors
    assert offline_page.blocked == []
