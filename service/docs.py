"""Interactive API docs served from this process: Swagger UI's assets come from the swagger-ui-bundle package.

FastAPI's default /docs page loads Swagger UI from a public CDN, which leaves the page blank on the closed
networks a broadcast or club deployment often sits on; here every asset is served locally under /docs/static.
"""

from __future__ import annotations

import logging

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

logger = logging.getLogger(__name__)

DOCS_URL = "/docs"
STATIC_URL = "/docs/static"


def install_docs(app: FastAPI) -> None:
    """Add GET /docs (Swagger UI with local assets) to an app created with ``docs_url=None``."""
    app.mount(STATIC_URL, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")
    oauth2_redirect_url = f"{DOCS_URL}/oauth2-redirect"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon-32x32.png",
            oauth2_redirect_url=oauth2_redirect_url,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
