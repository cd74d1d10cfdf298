"""The documentation site built as CI builds it (mkdocs build --strict) and opened in headless chromium, offline;
and the Getting started page's requests run, as written, against a real service.

Pages are served from 127.0.0.1; every request a page makes elsewhere (a CDN script, a web font, an analytics
beacon) is aborted and recorded, and fails the test. Screenshots go to the test's tmp_path, or to the folder
named by REID_TEST_SCREENSHOTS when set (to look at them).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service.core.settings import Settings
from tests.support.browser import OfflinePage
from tests.support.docs import page_commands
from tests.support.live_server import LiveServer

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 600  # the build imports the service (torch) to render its OpenAPI schema: slow on busy cores
LOADING_TAGS = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src", "embed": "src"}
EXTERNAL_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])(https?:)?//""", re.I)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built by `mkdocs build --strict` exactly as `make docs-build` and CI do."""
    pytest.importorskip("mkdocs", reason="the docs extra (mkdocs, mkdocs-material) is not installed")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return out


@pytest.fixture(scope="module")
def site_url(site: Path) -> Iterator[str]:
    """The built site over HTTP on 127.0.0.1 (a free port), as `make docs` would show it."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _LoadedResources(HTMLParser):
    """URLs a browser would fetch while loading the page (not links a reader may follow)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attribute = LOADING_TAGS.get(tag)
        values = dict(attrs)
        if attribute and values.get(attribute):
            if tag == "link" and (values.get("rel") or "") in ("canonical", "alternate", "next", "prev"):
                return
            self.urls.append(str(values[attribute]))
        if values.get("srcset"):
            self.urls += [part.split()[0] for part in str(values["srcset"]).split(",") if part.strip()]


def _title(page: Any) -> str:
    """The page's h1 without the permalink sign toc adds to it."""
    return str(page.locator("article h1").inner_text()).replace("\u00b6", "").strip()


def _screenshot(page: Any, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("REID_TEST_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=False)


def test_built_site_loads_nothing_from_outside(site: Path) -> None:
    """No page, stylesheet or script of the build points a browser at another host (fonts and CDNs included)."""
    external: list[str] = []
    for html_file in site.rglob("*.html"):
        parser = _LoadedResources()
        parser.feed(html_file.read_text(encoding="utf-8"))
        external += [f"{html_file.name}: {u}" for u in parser.urls if urlsplit(u).scheme or u.startswith("//")]
    for asset in [*site.rglob("*.css"), *site.rglob("*.html")]:
        text = asset.read_text(encoding="utf-8", errors="replace")
        external += [f"{asset.name}: {m.group(0)}" for m in EXTERNAL_URL.finditer(text)]
    assert not external, f"resources outside the site: {external[:20]}"
    unrendered = [p.name for p in site.rglob("*.html") if "<!-- generated:" in p.read_text(encoding="utf-8")]
    assert not unrendered, f"generated blocks left unrendered (docs/_hooks/reference.py not run?): {unrendered}"
    assert "fonts.googleapis" not in "".join(p.read_text(errors="replace") for p in site.rglob("*.html"))


def test_home_page_renders_offline_with_set_up_api_models_and_operations_one_click_away(
    site_url: str, offline_page: OfflinePage, tmp_path: Path
) -> None:
    page = offline_page.page
    page.goto(f"{site_url}/index.html")
    assert _title(page) == "SoccerNet player re-identification"
    picture = page.locator("article img[src$='overview.svg']")
    picture.wait_for()
    assert picture.evaluate("img => img.complete && img.naturalWidth > 0"), "the overview picture did not load"

    _screenshot(page, tmp_path, "docs-home.png")
    # Set-up, API, models and operations: one click from the home page's own text.
    for target, title in [
        ("getting-started.html", "Getting started"),
        ("api.html", "Using the API"),
        ("models.html", "Models"),
        ("operations.html", "Operations"),
    ]:
        page.goto(f"{site_url}/index.html")
        page.locator(f"article a[href='{target}']").first.click()
        page.wait_for_url(f"**/{target}")
        assert _title(page) == title

    # The page last opened is Operations: its settings table is generated from the Settings class.
    table = page.locator("article table").filter(has_text="REID_CHECKPOINT").inner_text()
    missing = [f"REID_{name.upper()}" for name in Settings.model_fields if f"REID_{name.upper()}" not in table]
    assert not missing, f"settings missing from the generated table: {missing}"

    assert offline_page.blocked == [], f"the site tried to leave 127.0.0.1: {offline_page.blocked}"
    assert offline_page.console_errors == []


def test_api_reference_renders_every_route_and_schema_offline(
    site_url: str, offline_page: OfflinePage, tmp_path: Path
) -> None:
    from service.app import create_app

    spec = create_app().openapi()
    page = offline_page.page
    page.goto(f"{site_url}/api-reference.html")
    assert _title(page) == "API reference"
    routes = page.locator("article table").first.inner_text()
    expected = [(m.upper(), path) for path, item in spec["paths"].items() for m in item if m != "parameters"]
    missing = [f"{m} {p}" for m, p in expected if not re.search(rf"{m}\s+{re.escape(p)}\s", routes + "\n")]
    assert not missing, f"routes missing from the API reference: {missing}"
    headings = {h.replace("\u00b6", "").strip() for h in page.locator("article h3").all_inner_texts()}
    absent = [name for name in spec["components"]["schemas"] if not any(h.startswith(name) for h in headings)]
    assert not absent, f"schemas missing from the API reference: {absent}"
    # An in-page link works: the route table's first entry jumps to its section.
    page.locator("article table a").first.click()
    assert urlsplit(page.url).fragment, page.url
    _screenshot(page, tmp_path, "docs-api-reference.png")

    page.goto(f"{site_url}/api.html")
    assert _title(page) == "Using the API"
    _screenshot(page, tmp_path, "docs-api.png")
    assert offline_page.blocked == [], f"the site tried to leave 127.0.0.1: {offline_page.blocked}"
    assert offline_page.console_errors == []


def test_getting_started_requests_run_as_written(make_server: Any, tmp_path: Path) -> None:
    """The page's curl commands, character for character, against a real service: curl's own config file
    (CURL_HOME/.curlrc, `connect-to`) sends 127.0.0.1:8000 to this test's server on its free port."""
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl not found: .ci/run installs it")
        pytest.skip("curl is not installed")
    requests = [c for c in page_commands(ROOT / "docs" / "getting-started.md") if c.startswith("curl ")]
    assert len(requests) == 3, requests

    server: LiveServer = make_server()
    port = urlsplit(server.url).port
    (tmp_path / ".curlrc").write_text(f"connect-to = 127.0.0.1:8000:127.0.0.1:{port}\n")
    env = {**os.environ, "CURL_HOME": str(tmp_path), "HOME": str(tmp_path)}

    answers = []
    for command in requests:
        run = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{command}\n{run.stderr}"
        answers.append(json.loads(run.stdout))
    registered, queried, dropped = answers

    labels = [item["label"] for item in registered["items"]]
    assert labels == ["home-32", "home-89", "away-32"], registered
    (result,) = queried["results"]
    assert {m["id"] for m in result["matches"]} == {item["id"] for item in registered["items"]}
    scores = [m["score"] for m in result["matches"]]
    assert scores == sorted(scores, reverse=True)
    assert result["match"] in (None, *labels) and "threshold" in queried
    assert dropped == {"name": "match-042", "deleted_items": 3}
    assert server.client().get("/collections").json()["collections"] == []
