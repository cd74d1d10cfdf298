"""The HTTP API through FastAPI's TestClient, on the tiny real model, real SQLite and real FAISS."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from service.app import threshold_policy
from service.core.settings import Settings
from tests.support.images import encode, files_field, noise_image, player_jpeg, player_png

AppFactory = Callable[..., Any]


def register(client: Any, collection: str, players: list[int], **extra: Any) -> list[dict[str, Any]]:
    response = client.post(
        "/gallery",
        files=files_field(*(player_png(p) for p in players)),
        data={"collection": collection, "labels": [f"player-{p}" for p in players], **extra},
    )
    assert response.status_code == 201, response.text
    return list(response.json()["items"])


def query(client: Any, collection: str, payloads: list[bytes], **data: Any) -> dict[str, Any]:
    response = client.post("/query", files=files_field(*payloads), data={"collection": collection, **data})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_health_ready_and_info(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/info").json()
    assert info["architecture"] == "osnet_x0_25"
    assert info["embedding_dim"] == 512 and info["input_size"] == [64, 32]
    assert (info["threshold"], info["threshold_source"], info["calibration"]) == (0.9, "checkpoint", None)
    assert info["device"] == "cpu" and info["autocast"] is None
    assert info["runtime"] == "onnxruntime" and info["runtime_reason"].startswith("auto on CPU")


def test_register_then_query_finds_the_same_player(client: Any) -> None:
    items = register(client, "match-1", [0, 1, 2, 3])
    assert [i["label"] for i in items] == ["player-0", "player-1", "player-2", "player-3"]
    assert all(i["collection"] == "match-1" for i in items)
    result = query(client, "match-1", [player_png(2), player_jpeg(1)], top_k=3)
    exact, jpeg = result["results"]
    assert exact["matches"][0]["id"] == items[2]["id"]
    assert exact["matches"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert exact["match"] == "player-2"
    assert jpeg["matches"][0]["label"] == "player-1"
    assert len(exact["matches"]) == 3
    scores = [m["score"] for m in exact["matches"]]
    assert scores == sorted(scores, reverse=True)
    assert result["threshold"] == 0.9


def test_candidates_group_matches_by_label(client: Any) -> None:
    client.post(
        "/gallery",
        files=files_field(player_png(0), player_png(0, 1), player_png(5)),
        data={"collection": "c", "labels": ["zero", "zero", "five"]},
    )
    result = query(client, "c", [player_png(0)], top_k=3)["results"][0]
    assert [m["label"] for m in result["matches"]][:2] == ["zero", "zero"]
    assert [c["label"] for c in result["candidates"]] == ["zero", "five"]
    assert result["candidates"][0]["score"] == result["matches"][0]["score"]


def test_threshold_decides_match_or_null(client: Any) -> None:
    register(client, "t", [0, 1, 2])
    stranger = encode(noise_image(7), "PNG")
    # The checkpoint's threshold (0.9) is below what this untrained model gives any image (~0.98): all match.
    lenient = query(client, "t", [player_png(1), stranger], top_k=1)
    assert lenient["threshold"] == pytest.approx(0.9)
    assert [r["match"] for r in lenient["results"]] == ["player-1", lenient["results"][1]["matches"][0]["label"]]
    # A threshold fixed in advance (not read off the scores): only an exact re-upload (cosine 1.0) reaches it.
    strict = 0.995
    decided = query(client, "t", [player_png(1), stranger], threshold=strict)
    assert decided["threshold"] == pytest.approx(strict)
    assert decided["results"][0]["matches"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert decided["results"][0]["match"] == "player-1"
    assert decided["results"][1]["match"] is None
    assert decided["results"][1]["matches"]  # ranked candidates are still returned


def test_threshold_precedence() -> None:
    base = Settings(checkpoint=None, default_threshold=0.3)
    assert threshold_policy(base, None).source == "default"
    assert threshold_policy(base, 0.6).value == 0.6
    env = Settings(checkpoint=None, threshold=0.1)
    assert (threshold_policy(env, 0.6).value, threshold_policy(env, 0.6).source) == (0.1, "setting")


def test_env_threshold_overrides_checkpoint(make_client: AppFactory) -> None:
    client = make_client(threshold=-1.0)
    register(client, "t", [0])
    result = query(client, "t", [encode(noise_image(3), "PNG")])
    assert result["threshold"] == -1.0 and result["results"][0]["match"] == "player-0"
    assert client.get("/info").json()["threshold_source"] == "setting"


def test_gallery_listing_item_and_delete(client: Any) -> None:
    items = register(client, "m", [0, 1, 2], metadata=[json.dumps({"frame": i}) for i in range(3)])
    register(client, "other", [3])
    page = client.get("/gallery", params={"collection": "m", "offset": 1, "limit": 1}).json()
    assert page["total"] == 3 and [i["id"] for i in page["items"]] == [items[1]["id"]]
    assert page["items"][0]["metadata"] == {"frame": 1}
    assert client.get("/gallery").json()["total"] == 4
    detail = client.get(f"/gallery/{items[0]['id']}").json()
    assert detail["label"] == "player-0" and len(detail["sha256"]) == 64
    deleted = client.delete(f"/gallery/{items[0]['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert client.get(f"/gallery/{items[0]['id']}").status_code == 404
    top = query(client, "m", [player_png(0)], top_k=5)["results"][0]["matches"]
    assert items[0]["id"] not in {m["id"] for m in top} and len(top) == 2


def test_collections_list_and_delete(client: Any) -> None:
    register(client, "a", [0, 1])
    register(client, "b", [2])
    sizes = {c["name"]: c["size"] for c in client.get("/collections").json()["collections"]}
    assert sizes == {"a": 2, "b": 1}
    response = client.delete("/collections/a")
    assert response.json() == {"name": "a", "deleted_items": 2}
    assert [c["name"] for c in client.get("/collections").json()["collections"]] == ["b"]
    missing = client.post("/query", files=files_field(player_png(0)), data={"collection": "a"})
    assert missing.status_code == 404 and missing.json()["error"] == "collection_not_found"


def test_gallery_survives_an_app_restart(make_client: AppFactory) -> None:
    first = make_client()
    items = register(first, "keep", [0, 1])
    first.__exit__(None, None, None)
    second = make_client()
    assert second.get("/gallery", params={"collection": "keep"}).json()["total"] == 2
    top = query(second, "keep", [player_png(1)])["results"][0]["matches"][0]
    assert top["id"] == items[1]["id"]


def test_api_key_guards_every_route_but_health_and_docs(make_client: AppFactory) -> None:
    client = make_client(api_key="s3cret")
    for path in ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    for method, path in (("get", "/collections"), ("get", "/info"), ("get", "/metrics"), ("get", "/gallery")):
        response = getattr(client, method)(path)
        assert response.status_code == 401 and response.json()["error"] == "unauthorized", path
        assert getattr(client, method)(path, headers={"X-API-Key": "wrong"}).status_code == 401
        assert getattr(client, method)(path, headers={"X-API-Key": "s3cret"}).status_code == 200
    refused = client.post("/gallery", files=files_field(player_png(0)), data={"collection": "x", "labels": ["a"]})
    assert refused.status_code == 401
    assert client.get("/collections", headers={"X-API-Key": "s3cret"}).json() == {"collections": []}


def test_metrics_exposes_the_service_instruments(client: Any) -> None:
    register(client, "m", [0, 1, 2])
    query(client, "m", [player_png(0)])
    text = client.get("/metrics").text
    assert 'reid_gallery_size{collection="m"} 3.0' in text
    assert "reid_inference_batch_size_count" in text
    assert 'reid_request_duration_seconds_count{method="POST",route="/query",status="200"} 1.0' in text
    assert "reid_queue_depth" in text and "reid_inference_seconds_bucket" in text
    for stage in ("receive", "decode", "embed", "search", "respond"):
        assert f'reid_query_stage_seconds_count{{stage="{stage}"}} 1.0' in text


def test_query_body_is_exactly_the_documented_schema(client: Any) -> None:
    """POST /query builds its JSON without pydantic: it must be what QueryResponse would serialise, field for field."""
    from service.http.schemas import QueryResponse

    register(client, "s", [0, 1, 2, 3])
    plain = query(client, "s", [player_png(0), player_jpeg(2)], top_k=3)
    pooled = query(client, "s", [player_png(0), player_jpeg(0), player_png(3)], tracklets=["t", "t", "u"], top_k=2)
    for body in (plain, pooled):
        assert QueryResponse.model_validate(body).model_dump(mode="json") == body
        assert list(body) == list(QueryResponse.model_fields)
        for result in body["results"]:
            assert list(result) == list(QueryResponse.model_fields["results"].annotation.__args__[0].model_fields)
    assert [r["crops"] for r in pooled["results"]] == [2, 1] and pooled["results"][0]["tracklet"] == "t"


def test_openapi_documents_every_field_with_examples(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/gallery", "/query", "/gallery/{item_id}", "/collections", "/collections/{name}", "/info"} <= set(
        spec["paths"]
    )
    schemas = spec["components"]["schemas"]
    for name in (
        "QueryResponse",
        "QueryResult",
        "Match",
        "Candidate",
        "GalleryItem",
        "InfoResponse",
        "ErrorResponse",
        "GalleryPage",
        "GalleryItemDetail",
    ):
        for field, prop in schemas[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
            if "$ref" not in prop and prop.get("type") != "array" and "items" not in prop:
                assert "examples" in prop or "example" in prop, f"{name}.{field} has no example"
    form_schema_ref = spec["paths"]["/query"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = schemas[form_schema_ref["$ref"].rsplit("/", 1)[-1]]
    assert {"files", "collection", "top_k", "threshold"} <= set(form["properties"])
    assert form["properties"]["top_k"]["maximum"] == 1000


def test_overload_is_refused_before_uploads_are_decoded(make_client: AppFactory) -> None:
    """A request that cannot fit in the inference queue gets 503 at once: junk bytes are not even decoded."""
    client = make_client(max_queue=2)
    register(client, "busy", [0])
    junk = [b"not an image at all"] * 3
    for path, data in (("/query", {"collection": "busy"}), ("/gallery", {"collection": "busy", "labels": ["a"] * 3})):
        response = client.post(path, files=files_field(*junk), data=data)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "overloaded"
        assert response.headers["Retry-After"] == "1"
    assert client.get("/gallery", params={"collection": "busy"}).json()["total"] == 1
    # Small enough requests still go through.
    assert query(client, "busy", [player_png(0)])["results"][0]["match"] == "player-0"


def test_docs_pages_need_no_cdn(client: Any) -> None:
    """Swagger UI's and ReDoc's pages and every asset they load are served by the service itself."""
    import re

    for path, bundle_name in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = client.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"], path
        assert "default-src 'self'" in page.headers["content-security-policy"], path
        assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css|png))["']""", page.text)
        assert any(a.endswith(bundle_name) for a in assets), path
        for asset in assets:
            assert asset.startswith("/docs/static/"), f"{asset} would be fetched from outside the service"
            response = client.get(asset)
            assert response.status_code == 200 and response.content, asset
        bundle = client.get(next(a for a in assets if a.endswith(bundle_name)))
        assert len(bundle.content) > 100_000  # the real bundle, not a stub
        assert "/openapi.json" in page.text
    # Swagger UI 5 reads OpenAPI 3.1 (Swagger UI 4 shows "does not specify a valid version field").
    bundle = client.get("/docs/static/swagger-ui-bundle.js").text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', bundle)
    assert version is not None and int(version.group(1)) >= 5, "Swagger UI 5 or later expected"


def test_the_same_crop_registered_again_is_a_409_naming_the_existing_item(client: Any) -> None:
    items = register(client, "dup", [0, 1, 2])
    again = client.post(
        "/gallery",
        files=files_field(player_png(5), player_png(1)),
        data={"collection": "dup", "labels": ["new-5", "again-1"]},
    )
    assert again.status_code == 409, again.text
    body = again.json()
    assert body["error"] == "duplicate_crop" and items[1]["id"] in body["detail"]
    assert body["duplicates"] == [{"file": 1, "id": items[1]["id"]}]
    # All or nothing: the new crop in the refused request was not registered either.
    listed = client.get("/gallery", params={"collection": "dup"}).json()
    assert [i["label"] for i in listed["items"]] == ["player-0", "player-1", "player-2"]
    # Re-encoded bytes of the same picture are another crop: only identical bytes are duplicates.
    assert client.post(
        "/gallery", files=files_field(player_jpeg(1)), data={"collection": "dup", "labels": ["jpeg-1"]}
    ).status_code == 201
    spec = client.get("/openapi.json").json()
    assert "409" in spec["paths"]["/gallery"]["post"]["responses"]
