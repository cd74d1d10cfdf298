"""Security headers on every kind of response (issue 34): JSON answers and errors, metrics, static assets, the
pages (/docs, /redoc, /ui) with their own policies, stored crops served only as images; CORS off unless
REID_CORS_ORIGINS names the origin. The browser side (a polyglot never rendered as HTML, no framing from another
origin) is tests/e2e/test_browser_security.py.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.core.headers import API_CSP, IMAGE_CSP, UI_CSP
from service.core.settings import Settings
from tests.service.conftest import AppFactory
from tests.support.images import files_field, player_jpeg, player_png

KEY = "a-key-for-the-header-tests"
ITEM = "3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70"


@pytest.fixture()
def backend() -> str:
    """Headers are HTTP-layer work, the same on every backend: the local one is enough here."""
    return "local"


def assert_baseline(response: Any, what: str) -> None:
    headers = response.headers
    assert headers.get("x-content-type-options") == "nosniff", what
    assert headers.get("referrer-policy") == "no-referrer", what
    assert headers.get("x-frame-options") == "DENY", what
    assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), what
    assert "access-control-allow-origin" not in headers, what


def webp_bytes() -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(player_png(3))).save(out, format="WEBP")
    return out.getvalue()


def test_every_kind_of_response_carries_the_headers(make_client: AppFactory) -> None:
    client = make_client(api_key=KEY, max_upload_bytes=200_000)
    key = {"X-API-Key": KEY}
    stored = client.post(
        "/gallery", files=files_field(player_png(0)), data={"collection": "h", "labels": ["p0"]}, headers=key
    )
    assert stored.status_code == 201, stored.text
    answers = {
        "json 200": client.get("/collections", headers=key),
        "json 201": stored,
        "health": client.get("/healthz"),
        "metrics": client.get("/metrics", headers=key),
        "openapi": client.get("/openapi.json"),
        "401": client.get("/collections"),
        "404 route": client.get("/no/such/route"),
        "404 item": client.get(f"/gallery/{ITEM}", headers=key),
        "405": client.put("/collections", headers=key),
        "422": client.get("/gallery", params={"limit": 0}, headers=key),
        "413 middleware": client.post("/query", content=b"x" * 300_000, headers=key),
        "docs asset": client.get("/docs/static/swagger-ui.css"),
        "ui asset": client.get("/ui/assets/ui.js"),
    }
    for what, response in answers.items():
        assert_baseline(response, what)
        assert response.headers["content-security-policy"] == API_CSP, what
    assert answers["413 middleware"].status_code == 413 and answers["401"].status_code == 401

    for path in ("/docs", "/redoc", "/ui"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        assert_baseline(page, path)
        policy = page.headers["content-security-policy"]
        for directive in ("script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
            assert directive in policy, (path, directive)
        assert "img-src 'self'" in policy, path
    assert client.get("/ui").headers["content-security-policy"] == UI_CSP
    assert "unsafe-inline" not in UI_CSP  # the /ui page runs its files only, never inline code


def test_an_unhandled_error_still_carries_the_headers(make_client: AppFactory) -> None:
    """Starlette answers a 500 from its outermost middleware, past ours: the handler adds the headers itself."""
    client = make_client()
    state = client.app.state.reid  # type: ignore[attr-defined]

    def broken(*_: Any) -> Any:
        raise RuntimeError("injected")

    state.gallery.collections = broken
    client._transport.raise_server_exceptions = False  # type: ignore[attr-defined]  # answer the 500, do not raise
    response = client.get("/collections")
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    assert_baseline(response, "500")


@pytest.mark.parametrize(
    ("make", "media_type", "extension"),
    [
        (lambda: player_png(1), "image/png", "png"),
        (lambda: player_jpeg(2), "image/jpeg", "jpg"),
        (webp_bytes, "image/webp", "webp"),
    ],
)
def test_a_stored_crop_is_served_only_as_its_image_type(
    make_client: AppFactory, make: Any, media_type: str, extension: str
) -> None:
    client = make_client()
    data = make()
    # A client's wrong part type and a hostile file name change nothing about how the crop is served back.
    files = [("files", ('x"; y=<script>.html', data, "text/html"))]
    item = client.post("/gallery", files=files, data={"collection": "img", "labels": ["p"]}).json()["items"][0]
    image = client.get(f"/gallery/{item['id']}/image")
    assert image.status_code == 200 and image.content == data
    assert image.headers["content-type"] == media_type
    assert image.headers["content-security-policy"] == IMAGE_CSP
    assert image.headers["content-security-policy"].split(";")[0] == "sandbox"
    assert image.headers["content-disposition"] == f'inline; filename="{item["id"]}.{extension}"'
    assert image.headers["x-content-type-options"] == "nosniff"


def test_damaged_stored_bytes_are_never_served_as_another_type(make_client: AppFactory) -> None:
    client = make_client()
    item = client.post("/gallery", files=files_field(player_png(4)), data={"collection": "d", "labels": ["p"]})
    item_id = item.json()["items"][0]["id"]
    state = client.app.state.reid  # type: ignore[attr-defined]
    state.gallery.get_image = lambda _id: b"<html><script>alert(1)</script></html>"
    client._transport.raise_server_exceptions = False  # type: ignore[attr-defined]  # answer the 500, do not raise
    response = client.get(f"/gallery/{item_id}/image")
    assert response.status_code == 500 and response.json()["error"] == "stored_crop_unreadable"
    assert response.headers["content-type"] == "application/json"
    assert_baseline(response, "damaged crop")


def test_no_cors_unless_origins_are_named(make_client: AppFactory, tmp_path: Path) -> None:
    allowed, other = "https://dashboard.example.org", "https://evil.example.net"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}

    closed = make_client()
    answer = closed.options("/query", headers={"Origin": allowed, **preflight})
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in closed.get("/healthz", headers={"Origin": allowed}).headers

    opened = make_client(cors_origins=(allowed,), data_dir=tmp_path / "cors")
    answer = opened.options("/query", headers={"Origin": allowed, **preflight})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == allowed
    assert "x-api-key" in answer.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in answer.headers
    assert answer.headers["x-content-type-options"] == "nosniff"
    simple = opened.get("/healthz", headers={"Origin": allowed})
    assert simple.headers["access-control-allow-origin"] == allowed
    refused = opened.options("/query", headers={"Origin": other, **preflight})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-origin" not in opened.get("/healthz", headers={"Origin": other}).headers


@pytest.mark.parametrize("value", ["*", "https://a.example.org/path", "ftp://a.example.org", "a.example.org"])
def test_cors_origins_must_be_named_origins(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REID_CORS_ORIGINS", value)
    with pytest.raises(ValueError, match="cors_origins"):
        Settings()


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REID_CORS_ORIGINS", " https://a.example.org/, http://127.0.0.1:3000 ")
    assert Settings().cors_origins == ("https://a.example.org", "http://127.0.0.1:3000")
    monkeypatch.setenv("REID_CORS_ORIGINS", "")
    assert Settings().cors_origins == ()
