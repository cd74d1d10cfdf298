"""One error shape for every 4xx/5xx answer: {"error": code, "detail": human message}.

Routes raise ServiceError (or a subclass); FastAPI's own validation errors and Starlette's HTTP errors
(unknown route, wrong method, unparseable body) are converted by the handlers installed here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.headers import with_baseline

logger = logging.getLogger(__name__)

_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    507: "insufficient_storage",
}


class ServiceError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a message for humans."""

    def __init__(
        self,
        status_code: int,
        code: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        # Further fields of the JSON body beside error and detail (e.g. the existing ids of a 409 duplicate).
        self.extra = dict(extra or {})


class NotFoundError(ServiceError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(404, code, detail)


class OverloadedError(ServiceError):
    """The inference queue cannot take the request's crops right now."""

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(503, "overloaded", detail, {"Retry-After": str(retry_after_s)})


class InsufficientStorageError(ServiceError):
    """The disk holding the data is full: 507. The write was rolled back, nothing earlier is lost, reads go on."""

    def __init__(self, detail: str) -> None:
        super().__init__(507, "insufficient_storage", detail)


class NotReadyError(ServiceError):
    def __init__(self, detail: str = "the model is not loaded yet") -> None:
        super().__init__(503, "not_ready", detail, {"Retry-After": "1"})


class ImageError(ServiceError):
    """A bad upload, naming the file by position and name so a client can find it in a batch."""

    def __init__(self, status_code: int, code: str, index: int, filename: str | None, reason: str) -> None:
        name = f" ({filename!r})" if filename else ""
        super().__init__(status_code, code, f"file #{index}{name}: {reason}")
        self.index = index
        self.filename = filename


def error_body(code: str, detail: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {**(extra or {}), "error": code, "detail": detail}


def error_response(
    status_code: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, detail, extra), status_code=status_code, headers=dict(headers or {}))


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """Turn pydantic error dicts into one line naming each field, e.g. 'body.files: Field required'."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


async def _service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status_code >= 500:
        logger.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status_code, exc.code, exc.detail)
    return error_response(exc.status_code, exc.code, exc.detail, exc.headers, exc.extra)


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "validation_error", describe_validation_errors(exc.errors()))


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "internal_error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and "parsing the body" in detail:
        code = "malformed_body"
        detail = "the request body is not valid multipart/form-data (or exceeds the form limits)"
    return error_response(exc.status_code, code, detail, getattr(exc, "headers", None))


async def _unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    # Starlette answers this one from its outermost middleware, past SecurityHeadersMiddleware: add them here.
    return error_response(500, "internal_error", "internal server error", with_baseline())


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the {"error", "detail"} shape."""
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unhandled_error_handler)
