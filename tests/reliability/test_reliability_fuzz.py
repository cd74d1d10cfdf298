"""Schemathesis against the live server's /openapi.json: every route, valid and invalid inputs, with the API key
configured. No 5xx, every response matches the documented status codes, content types and schemas.

The multipart routes get real image bytes as well as junk: a deterministic share of the generated `files` parts
is replaced by encoded player crops (PNG/JPEG/WebP), so /gallery and /query reach the model and the store.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from service.app import create_app
from tests.reliability.conftest import RUN_SLOW, report
from tests.support.images import encode, player_crop, player_png
from tests.support.live_server import LiveServer, server_env

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

API_KEY = "fuzz-key-0123456789"
MAX_EXAMPLES = 150 if RUN_SLOW else 40
SEEDED = "fuzz-seeded"  # not the OpenAPI example name, which DELETE /collections/{name} removes
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"]
MULTIPART_ROUTES = {"/gallery", "/query"}
SEEN: Counter[tuple[str, str, int]] = Counter()

_IMAGES = [
    player_png(1),
    encode(player_crop(2), "JPEG", quality=90),
    encode(player_crop(3), "WEBP"),
    player_png(4, 1),
]


@pytest.fixture(scope="module")
def fuzz_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    env = server_env(
        tiny_checkpoint,
        tmp / "data",
        REID_API_KEY=API_KEY,
        REID_MAX_FILES="8",
        REID_MAX_UPLOAD_BYTES="2000000",
        REID_LOG_LEVEL="WARNING",
    )
    server = LiveServer(env, log_path=tmp / "server.log")
    with server:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=30) as client:
            # A collection that exists, so generated queries sometimes reach the index.
            seeded = client.post(
                "/gallery",
                files=[("files", ("a.png", player_png(1), "image/png"))],
                data={"collection": SEEDED, "labels": ["home-7"]},
            )
            assert seeded.status_code == 201, seeded.text
        yield server
    report("schemathesis", calls=sum(SEEN.values()), by_route_status=dict(sorted(SEEN.items())))
    log = server.logs()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> Any:
    config = SchemathesisConfig.from_dict(
        {
            # Given as configuration (not per call) so schemathesis knows the key is sent on every request.
            "headers": {"X-API-Key": API_KEY},
            # 413 (too many files, upload too large) is as much a refusal of bad input as 400/422.
            "checks": {"negative_data_rejection": {"expected-statuses": [*REFUSALS, "413"]}},
        }
    )
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config)


def _documented_operations() -> list[tuple[str, str, GenerationMode]]:
    """(METHOD, path, mode) for every route of the app's OpenAPI document (built without starting the app):
    valid inputs everywhere, invalid inputs wherever the route takes any input."""
    spec = create_app().openapi()
    operations = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            operations.append((method.upper(), path, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                operations.append((method.upper(), path, GenerationMode.NEGATIVE))
    return operations


OPERATIONS = _documented_operations()


def _with_real_images(case: Any) -> None:
    """In 2 of 3 valid multipart cases (chosen from the case's own bytes), swap the generated file parts for real
    images and pair the labels (and metadata) with them, so the request gets through to the model and the store.
    Invalid cases keep schemathesis' junk: replacing it would make them valid."""
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("files"), list) or not body["files"]:
        return
    digest = hashlib.sha256(repr(body).encode()).digest()
    if digest[0] % 3 == 0:
        return  # keep schemathesis' own bytes: junk uploads
    count = len(body["files"])
    body["files"] = [_IMAGES[(digest[1] + i) % len(_IMAGES)] for i in range(count)]
    labels = body.get("labels")
    if isinstance(labels, list) and labels:
        body["labels"] = [labels[i % len(labels)] for i in range(count)]
    if isinstance(body.get("metadata"), list) and len(body["metadata"]) != count:
        del body["metadata"]
    if "labels" not in body and digest[2] % 2 == 0:  # /query: ask the seeded collection half of the time
        body["collection"] = SEEDED


def test_every_route_is_fuzzed() -> None:
    routes = {(method, path) for method, path, _ in OPERATIONS}
    assert len(routes) >= 11, routes
    assert {("POST", "/gallery"), ("POST", "/query"), ("GET", "/metrics")} <= routes
    negative = {(method, path) for method, path, mode in OPERATIONS if mode is GenerationMode.NEGATIVE}
    assert {("POST", "/gallery"), ("POST", "/query"), ("DELETE", "/gallery/{item_id}")} <= negative


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS, ids=[f"{m} {p} {g}" for m, p, g in OPERATIONS])
def test_route_honours_its_schema(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    # The multipart routes validate what OpenAPI cannot express (the bytes are a decodable image, one label per
    # file, metadata is a JSON object): schema-valid junk rightly gets 400/413/415/422 there, so "valid data must be
    # accepted" is not asked of them. Every other check (no 5xx, status codes, content types, response schemas,
    # invalid data rejected, auth enforced, ...) still runs on them.
    excluded = [positive_data_acceptance] if path in MULTIPART_ROUTES else []
    # ignored_auth sends a wrong bearer token next to the (configured, right) X-API-Key; the two schemes are
    # alternatives (either one suffices), so the 2xx it flags is correct. Wrong/missing keys on every route are
    # covered by test_reliability_security.py instead.
    excluded.append(ignored_auth)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        if mode is GenerationMode.POSITIVE:
            _with_real_images(case)
        response = case.call_and_validate(excluded_checks=excluded, timeout=60)
        SEEN[(method, path, response.status_code)] += 1
        statuses[response.status_code] += 1
        assert response.status_code < 500, response.text

    statuses: Counter[int] = Counter()
    run()
    if mode is GenerationMode.POSITIVE and path in MULTIPART_ROUTES:
        # The real images went through decoding, the model and the store at least once: without a 2xx the fuzzing
        # only ever met refusals, and a service refusing every upload would pass.
        assert any(200 <= status < 300 for status in statuses), dict(statuses)
