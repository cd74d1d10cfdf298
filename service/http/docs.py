"""Interactive API docs served from this process: Swagger UI 5 at /docs and ReDoc at /redoc, no CDN.

FastAPI's default pages load Swagger UI and ReDoc from a public CDN, which leaves them blank on the closed
networks a broadcast or club deployment often sits on. The assets here come from the ``fastapi-offline``
wheel on PyPI, which ships Swagger UI 5 (reads the OpenAPI 3.1 document FastAPI emits; Swagger UI 4 cannot) and
the ReDoc standalone bundle; only its static folder is used, the app stays a plain FastAPI. Every asset is
served under /docs/static, nothing else is fetched: no Google fonts, no online validator badge.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

logger = logging.getLogger(__name__)

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
STATIC_URL = "/docs/static"
ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"

# validatorUrl None: Swagger UI would otherwise ask an online validator for a badge image.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "tryItOutEnabled": False, "displayRequestDuration": True}

# The browser itself refuses anything from another origin on the docs pages. ReDoc 2 always renders its
# "API docs by Redocly" logo from its CDN; refused here, its own error handler drops the image. Inline
# script/style: the pages' bootstrap code; blob: workers: ReDoc's search index.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'"
)


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def assets_version() -> str:
    """Version of the fastapi-offline wheel the assets come from (for logs and bug reports)."""
    try:
        return version("fastapi-offline")
    except PackageNotFoundError:  # pragma: no cover - importable but not installed as a distribution
        return "unknown"


def mark_uploads_binary(schema: Any) -> int:
    """Add ``format: binary`` to every string schema with a ``contentMediaType`` (an uploaded file), in place;
    returns how many.

    FastAPI writes an UploadFile as OAS 3.1 wants it, ``{"type": "string", "contentMediaType": ...}``. Swagger UI
    5 shows a file picker for such a property, but not for the items of an array of them (POST /gallery and
    POST /query take ``files`` as an array): its array widget looks for ``format: binary`` (the OAS 3.0 way),
    and without it renders text boxes whose text the server then refuses. Both keywords together are valid
    OAS 3.1 and give every viewer what it looks for.
    """
    count = 0
    if isinstance(schema, dict):
        if schema.get("type") == "string" and "contentMediaType" in schema and "format" not in schema:
            schema["format"] = "binary"
            count += 1
        for value in schema.values():
            count += mark_uploads_binary(value)
    elif isinstance(schema, list):
        for value in schema:
            count += mark_uploads_binary(value)
    return count


def install_openapi_uploads(app: FastAPI) -> None:
    """Serve the OpenAPI document with uploads marked binary (see mark_uploads_binary), built once."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            mark_uploads_binary(schema.get("components", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """Add GET /docs (Swagger UI) and GET /redoc (ReDoc), local assets only, to an app created with
    ``docs_url=None, redoc_url=None``."""
    if not (ASSETS_DIR / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"Swagger UI assets missing in {ASSETS_DIR}: reinstall fastapi-offline")
    app.mount(STATIC_URL, StaticFiles(directory=ASSETS_DIR), name="docs-static")
    install_openapi_uploads(app)
    oauth2_redirect_url = f"{DOCS_URL}/oauth2-redirect"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
            oauth2_redirect_url=oauth2_redirect_url,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        return _local_only(page)

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _local_only(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API reference",
            redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )
        return _local_only(page)

    logger.debug("API docs at %s and %s, assets from fastapi-offline %s", DOCS_URL, REDOC_URL, assets_version())
