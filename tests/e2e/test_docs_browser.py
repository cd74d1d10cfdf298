"""/docs and /redoc in a real headless browser (Debian's chromium driven by Playwright), with no network.

The server is a real uvicorn process on 127.0.0.1; every request the page makes is intercepted, and any that
would leave 127.0.0.1 is aborted and recorded, so a page that needs a CDN fails here instead of in the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.support.browser import OfflinePage
from tests.support.live_server import LiveServer


def _spec(server: LiveServer) -> dict[str, Any]:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    assert spec["openapi"].startswith("3.1"), spec["openapi"]
    return spec


def test_swagger_ui_shows_every_path_and_runs_healthz_offline(
    shared_server: LiveServer, offline_page: OfflinePage, tmp_path: Path
) -> None:
    spec = _spec(shared_server)
    page = offline_page.page
    page.goto(f"{shared_server.url}/docs")
    # Either the operations render or Swagger UI says why not (e.g. 4.x: "does not specify a valid version").
    page.wait_for_selector(".opblock-summary-path, .errors-wrapper", state="attached")
    assert page.locator(".errors-wrapper").count() == 0, page.locator(".errors-wrapper").first.inner_text()

    shown = set(page.locator(".opblock-summary-path").evaluate_all("els => els.map(e => e.dataset.path)"))
    assert set(spec["paths"]) <= shown, f"missing on the page: {set(spec['paths']) - shown}"

    healthz = page.locator(".opblock-get").filter(has=page.locator('.opblock-summary-path[data-path="/healthz"]'))
    healthz.locator(".opblock-summary").click()
    healthz.get_by_role("button", name="Try it out").click()
    with page.expect_response(lambda r: urlsplit(r.url).path == "/healthz") as answer:
        healthz.get_by_role("button", name="Execute").click()
    assert answer.value.status == 200 and answer.value.json() == {"status": "ok"}
    live = healthz.locator(".live-responses-table tr.response .response-col_status").first
    live.wait_for()
    assert live.inner_text().strip() == "200"
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)

    assert offline_page.blocked == [], f"the page tried to leave 127.0.0.1: {offline_page.blocked}"
    assert any(url.endswith("/openapi.json") for url in offline_page.requested)
    assert offline_page.console_errors == []


def test_redoc_renders_every_operation_offline(
    shared_server: LiveServer, offline_page: OfflinePage, tmp_path: Path
) -> None:
    spec = _spec(shared_server)
    page = offline_page.page
    page.goto(f"{shared_server.url}/redoc")
    page.wait_for_selector("h2", state="attached")
    text = page.locator("body").inner_text()
    assert "Something went wrong" not in text
    summaries = [op["summary"] for item in spec["paths"].values() for op in item.values() if "summary" in op]
    assert summaries
    missing = [s for s in summaries if s not in text]
    assert not missing, f"operations missing from ReDoc: {missing}"
    page.screenshot(path=str(tmp_path / "redoc.png"))
    assert offline_page.blocked == [], f"the page tried to leave 127.0.0.1: {offline_page.blocked}"
    # ReDoc's own "Redocly" logo points at its CDN: the page's Content-Security-Policy refuses it in the browser.
    unexpected = [e for e in offline_page.console_errors if "img-src" not in e]
    assert unexpected == [], unexpected
