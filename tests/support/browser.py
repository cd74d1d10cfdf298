"""Headless Debian chromium driven by Playwright, with every request outside 127.0.0.1 aborted and recorded.

    with launch_chromium() as chromium:          # skips the test where chromium is absent (fails in CI)
        page = OfflinePage(chromium)
        page.page.goto(url)
        assert page.blocked == []                # nothing tried to reach a CDN, a font service or the internet

Used by the browser tests of the service's /docs and /redoc and of the documentation site.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

logger = logging.getLogger(__name__)

CHROMIUM = os.environ.get("REID_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1"}
TIMEOUT_MS = 60_000  # two shared cores: large bundles parse slowly while a server warms up


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """A headless chromium; skips where it is not installed, except in CI (.ci/run installs it)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"chromium not found at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip(f"chromium not installed ({CHROMIUM}); `apt-get install chromium` to run the browser tests")
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class OfflinePage:
    """A page whose every request is checked: 127.0.0.1 goes through, anything else is aborted and noted."""

    def __init__(self, browser: Any, viewport: dict[str, int] | None = None) -> None:
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 1600})
        self.requested: list[str] = []
        self.blocked: list[str] = []
        self.console_errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))

    def _route(self, route: Any) -> None:
        url = route.request.url
        self.requested.append(url)
        scheme, host = urlsplit(url).scheme, urlsplit(url).hostname
        if scheme in ("data", "blob") or (scheme in ("http", "https") and host in LOCAL_HOSTS):
            route.continue_()
        else:
            logger.info("blocked a request outside 127.0.0.1: %s", url)
            self.blocked.append(url)
            route.abort()

    def close(self) -> None:
        self.context.close()
