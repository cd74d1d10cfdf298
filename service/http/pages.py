"""Pages for people at /ui: collections, a gallery's crops, registering and querying, in the browser.

Plain HTML, CSS and JavaScript files shipped in the package (service/http/ui/): nothing to build, nothing from a
CDN. The pages call the public API like any client (same limits, errors and key); the key is typed once, kept in
the tab's sessionStorage and sent as the X-API-Key header, never in a URL.

    reid-serve ...  then open http://127.0.0.1:8000/ui
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.core.headers import UI_CSP

logger = logging.getLogger(__name__)

UI_URL = "/ui"
ASSETS_URL = "/ui/assets"
UI_DIR = Path(__file__).resolve().parent / "ui"


def install_ui(app: FastAPI) -> None:
    """Add GET /ui (the page) and /ui/assets (its script and style sheet)."""
    index = UI_DIR / "index.html"
    if not index.is_file():
        raise RuntimeError(f"the /ui page is missing: {index} (reinstall the package)")
    app.mount(ASSETS_URL, StaticFiles(directory=UI_DIR), name="ui-assets")

    @app.get(UI_URL, include_in_schema=False)
    async def ui_page() -> FileResponse:
        # no-cache: the page is revalidated, so an upgraded service never runs yesterday's script with today's API.
        return FileResponse(
            index,
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache"},
        )

    logger.debug("pages at %s, assets from %s", UI_URL, UI_DIR)
