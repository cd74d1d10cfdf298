"""Every bad input listed in ARCHITECTURE.md: a 4xx JSON answer naming the problem, the process still serving,
and the gallery exactly as it was."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import BACKENDS
from tests.support.images import encode, files_field, player_png

LIMITS = {
    "max_upload_bytes": 300_000,
    "max_file_bytes": 100_000,
    "max_files": 4,
    "max_image_pixels": 1_000_000,
    "max_image_side": 4000,
    "min_image_side": 4,
}


def noise_png(width: int, height: int) -> bytes:
    rng = np.random.default_rng(width * height)
    return encode(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)), "PNG")


def truncated_png() -> bytes:
    data = player_png(3)
    return data[: len(data) // 2]


def post_gallery(files: list[Any], **data: Any) -> tuple[str, str, dict[str, Any]]:
    return "POST", "/gallery", {"files": files, "data": {"collection": "base", **data}}


def one_bad_file(payload: bytes, name: str = "bad.png") -> tuple[str, str, dict[str, Any]]:
    # A good file first: the whole request must still be refused (all or nothing).
    return post_gallery(files_field(player_png(5), payload, names=["good.png", name]), labels=["p5", "x"])


CASES: dict[str, tuple[Callable[[], tuple[str, str, dict[str, Any]]], int, str]] = {
    "non_image": (lambda: one_bad_file(b"GIF89a? no: plain text " * 20, "notes.txt"), 415, "unsupported_media_type"),
    "truncated": (lambda: one_bad_file(truncated_png()), 400, "invalid_image"),
    "decompression_bomb": (lambda: one_bad_file(encode(Image.new("L", (3000, 3000)), "PNG")), 413, "image_too_large"),
    "zero_size": (lambda: one_bad_file(b"", "empty.png"), 400, "empty_file"),
    "huge_dimensions": (lambda: one_bad_file(encode(Image.new("RGB", (4500, 6)), "PNG")), 413, "image_too_large"),
    "tiny_image": (lambda: one_bad_file(encode(Image.new("RGB", (2, 40)), "PNG")), 400, "image_too_small"),
    "too_many_files": (
        lambda: post_gallery(files_field(*(player_png(i) for i in range(5))), labels=[str(i) for i in range(5)]),
        413,
        "too_many_files",
    ),
    "oversized_upload": (lambda: post_gallery(files_field(b"\0" * 400_000), labels=["a"]), 413, "payload_too_large"),
    "oversized_file": (lambda: one_bad_file(noise_png(260, 200)), 413, "file_too_large"),
    "unknown_collection": (
        lambda: ("POST", "/query", {"files": files_field(player_png(0)), "data": {"collection": "nope"}}),
        404,
        "collection_not_found",
    ),
    # The collection is checked in the same decode task as the files: an unknown one still outranks a bad file.
    "unknown_collection_and_bad_file": (
        lambda: ("POST", "/query", {"files": files_field(b"not an image"), "data": {"collection": "nope"}}),
        404,
        "collection_not_found",
    ),
    "unknown_id_get": (lambda: ("GET", "/gallery/00000000-0000-4000-8000-000000000000", {}), 404, "item_not_found"),
    "unknown_id_delete": (
        lambda: ("DELETE", "/gallery/00000000-0000-4000-8000-000000000000", {}),
        404,
        "item_not_found",
    ),
    "bad_uuid": (lambda: ("DELETE", "/gallery/not-a-uuid", {}), 422, "validation_error"),
    "unknown_collection_delete": (lambda: ("DELETE", "/collections/nope", {}), 404, "collection_not_found"),
    "unknown_collection_list": (lambda: ("GET", "/gallery?collection=nope", {}), 404, "collection_not_found"),
    "metadata_not_json": (
        lambda: post_gallery(files_field(player_png(5)), labels=["p5"], metadata=["{frame: 1"]),
        422,
        "invalid_metadata",
    ),
    "metadata_not_object": (
        lambda: post_gallery(files_field(player_png(5)), labels=["p5"], metadata=["[1, 2]"]),
        422,
        "invalid_metadata",
    ),
    "metadata_count": (
        lambda: post_gallery(files_field(player_png(5)), labels=["p5"], metadata=["{}", "{}"]),
        422,
        "metadata_count_mismatch",
    ),
    "label_count": (
        lambda: post_gallery(files_field(player_png(5), player_png(6)), labels=["p5"]),
        422,
        "label_count_mismatch",
    ),
    "blank_label": (lambda: post_gallery(files_field(player_png(5)), labels=["  "]), 422, "invalid_label"),
    "label_too_long": (lambda: post_gallery(files_field(player_png(5)), labels=["🙂" * 129]), 422, "invalid_label"),
    "metadata_too_large": (
        lambda: post_gallery(files_field(player_png(5)), labels=["p5"], metadata=[json.dumps({"x": "y" * 17_000})]),
        422,
        "metadata_too_large",
    ),
    "quotes_in_collection": (
        lambda: post_gallery(files_field(player_png(5)), labels=["p5"], collection='base" or gallery != "'),
        422,
        "validation_error",
    ),
    "wrong_file_field": (
        lambda: (
            "POST",
            "/gallery",
            {
                "files": [("file", ("a.png", player_png(5), "image/png"))],
                "data": {"collection": "base", "labels": ["p5"]},
            },
        ),
        422,
        "validation_error",
    ),
    "wrong_label_field": (lambda: post_gallery(files_field(player_png(5)), label=["p5"]), 422, "validation_error"),
    "bad_collection_name": (
        lambda: (
            "POST",
            "/gallery",
            {"files": files_field(player_png(5)), "data": {"collection": "no spaces!", "labels": ["p5"]}},
        ),
        422,
        "validation_error",
    ),
    "top_k_out_of_range": (
        lambda: ("POST", "/query", {"files": files_field(player_png(0)), "data": {"collection": "base", "top_k": 0}}),
        422,
        "validation_error",
    ),
    "threshold_out_of_range": (
        lambda: (
            "POST",
            "/query",
            {"files": files_field(player_png(0)), "data": {"collection": "base", "threshold": 1.5}},
        ),
        422,
        "validation_error",
    ),
    "json_instead_of_multipart": (
        lambda: ("POST", "/gallery", {"json": {"collection": "base", "labels": ["x"]}}),
        422,
        "validation_error",
    ),
    "unknown_route": (lambda: ("GET", "/nothing-here", {}), 404, "not_found"),
    "wrong_method": (lambda: ("PUT", "/collections", {}), 405, "method_not_allowed"),
}


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tiny_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    # One app for all cases: also shows that one process survives the whole list of bad requests.
    import warnings

    from service.app import create_app
    from service.core.settings import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    settings = Settings(
        checkpoint=tiny_checkpoint,
        data_dir=tmp_path_factory.mktemp("bad"),
        device="cpu",
        warmup_batches=1,
        max_batch_size=4,
        gallery_backend=request.param,
        **LIMITS,
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/gallery",
            files=files_field(player_png(0), player_png(1)),
            data={"collection": "base", "labels": ["p0", "p1"]},
        )
        assert response.status_code == 201
        yield client


def snapshot(client: Any) -> tuple[Any, Any]:
    return client.get("/gallery", params={"limit": 1000}).json(), client.get("/collections").json()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_cleanly(server: Any, case: str) -> None:
    build, status, code = CASES[case]
    before = snapshot(server)
    method, path, kwargs = build()
    response = server.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert snapshot(server) == before
    # Still serving: a good query right after works.
    ok = server.post("/query", files=files_field(player_png(1)), data={"collection": "base", "top_k": 1})
    assert ok.status_code == 200 and ok.json()["results"][0]["matches"][0]["label"] == "p1"


def test_bad_file_is_named_by_position_and_filename(server: Any) -> None:
    method, path, kwargs = one_bad_file(truncated_png(), "frame_0042.png")
    detail = server.request(method, path, **kwargs).json()["detail"]
    assert "file #1" in detail and "frame_0042.png" in detail


def test_validation_errors_name_the_field(server: Any) -> None:
    detail = server.post(
        "/gallery",
        files=[("file", ("a.png", player_png(5), "image/png"))],
        data={"collection": "base", "labels": ["p5"]},
    ).json()["detail"]
    assert "files" in detail
    detail = server.post("/query", files=files_field(player_png(0)), data={"collection": "base", "top_k": 5000}).json()[
        "detail"
    ]
    assert "top_k" in detail


def test_chunked_body_over_the_limit_is_cut_off(server: Any) -> None:
    before = snapshot(server)
    boundary = "xyzzy"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="collection"\r\n\r\nbase\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="labels"\r\n\r\na\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
    ).encode()

    def chunks() -> Iterator[bytes]:
        # No Content-Length: only counting the bytes as they arrive can stop this one.
        yield head
        for _ in range(50):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    response = server.post(
        "/gallery", content=chunks(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
    assert snapshot(server) == before
