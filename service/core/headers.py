"""Security headers every response carries, and the Content-Security-Policy of each kind of response.

The API key lives in the browser pages (/ui, /docs) and user bytes are served back on the same origin
(GET /gallery/{id}/image), so: no MIME sniffing anywhere, no Referer leaving the service, no page that another
site can frame, and stored crops that a browser can only ever show as an image.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# On every response, errors included. X-Frame-Options is the older browsers' form of frame-ancestors 'none'.
BASELINE_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}

# JSON, metrics and static assets: nothing in them is ever meant to run or be framed.
API_CSP = "default-src 'none'; frame-ancestors 'none'"

# The /ui pages: their own scripts, styles and the service's API only; crops arrive as blob: URLs made from
# fetch() answers (the key travels in a header, which an <img src> cannot send).
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# A stored crop, exactly as uploaded: even bytes that are also HTML (a polyglot) get no script, no plugin and a
# unique opaque origin if a browser is ever talked into treating them as a document.
IMAGE_CSP = "sandbox; default-src 'none'"


def with_baseline(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the baseline security headers and the API policy (for answers built outside the
    middleware, e.g. the unhandled-error 500 sent by Starlette's outermost error middleware)."""
    merged = {**BASELINE_HEADERS, "Content-Security-Policy": API_CSP}
    merged.update(headers or {})
    return merged
