"""ASGI middleware: the baseline security headers on every response, and CORS for the origins named in
REID_CORS_ORIGINS only (none by default, so no other site's page can read an answer).

    REID_CORS_ORIGINS=https://dashboard.example.org,http://localhost:3000 reid-serve ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.headers import API_CSP, BASELINE_HEADERS

logger = logging.getLogger(__name__)

# What a page on an allowed origin may send: the key in either of its headers, multipart bodies.
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_HEADERS = ("X-API-Key", "Authorization", "Content-Type")
CORS_EXPOSED = ("Retry-After",)


class SecurityHeadersMiddleware:
    """Adds BASELINE_HEADERS to every response and API_CSP to those that set no policy of their own (pages and
    stored crops set theirs); a header a route set itself is left as it is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in BASELINE_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("Content-Security-Policy", API_CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ConfiguredCorsMiddleware:
    """Starlette's CORSMiddleware for ``origins()`` (read per request: settings are loaded in the lifespan),
    or nothing at all when that list is empty: no Access-Control-* header is ever sent then."""

    def __init__(self, app: ASGIApp, origins: Callable[[], Sequence[str]]) -> None:
        self.app = app
        self.origins = origins
        self._cors: dict[tuple[str, ...], ASGIApp] = {}

    def _for(self, origins: tuple[str, ...]) -> ASGIApp:
        cors = self._cors.get(origins)
        if cors is None:
            logger.info("CORS allowed for %s", ", ".join(origins))
            cors = CORSMiddleware(
                self.app,
                allow_origins=origins,
                allow_methods=CORS_METHODS,
                allow_headers=CORS_HEADERS,
                expose_headers=CORS_EXPOSED,
                allow_credentials=False,  # the key is a header, never a cookie
            )
            self._cors[origins] = cors
        return cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = tuple(self.origins()) if scope["type"] == "http" else ()
        if not origins:
            await self.app(scope, receive, send)
            return
        await self._for(origins)(scope, receive, send)
