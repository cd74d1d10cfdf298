"""Tracklet queries through the HTTP API (TestClient, tiny real model, real SQLite and FAISS): grouping, order,
pooling, per-size thresholds and bad `tracklets` fields. Real crops through a real server: tests/e2e."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.pooling import pool_embeddings
from service.core.errors import ServiceError
from service.http.tracklets import MAX_TRACKLET_LENGTH, QueryGroup, parse_tracklets, pool_queries
from tests.support.checkpoints import make_tiny_checkpoint
from tests.support.images import files_field, player_png

AppFactory = Callable[..., Any]


def register(client: Any, players: list[int], collection: str = "t") -> None:
    response = client.post(
        "/gallery",
        files=files_field(*(player_png(p) for p in players)),
        data={"collection": collection, "labels": [f"player-{p}" for p in players]},
    )
    assert response.status_code == 201, response.text


def post_query(client: Any, payloads: list[bytes], **data: Any) -> Any:
    return client.post("/query", files=files_field(*payloads), data={"collection": "t", **data})


def test_parse_groups_in_order_of_first_appearance() -> None:
    assert parse_tracklets(None, 2) == [QueryGroup(None, (0,)), QueryGroup(None, (1,))]
    assert parse_tracklets(["b", "a", "b", "c", "a"], 5) == [
        QueryGroup("b", (0, 2)),
        QueryGroup("a", (1, 4)),
        QueryGroup("c", (3,)),
    ]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (["a"], "tracklet_count_mismatch"),
        (["a", "a", "a"], "tracklet_count_mismatch"),
        (["a", "  "], "invalid_tracklet"),
        (["a", "x" * (MAX_TRACKLET_LENGTH + 1)], "invalid_tracklet"),
    ],
)
def test_parse_refuses_bad_fields(raw: list[str], code: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_tracklets(raw, 2)
    assert (caught.value.status_code, caught.value.code) == (422, code)


def test_pool_queries_pools_only_groups() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    plain = pool_queries(emb, parse_tracklets(None, 3))
    assert np.array_equal(plain, emb)
    pooled = pool_queries(emb, parse_tracklets(["x", "y", "x"], 3))
    assert np.allclose(pooled[0], pool_embeddings(emb[[0, 2]])) and np.allclose(pooled[1], emb[1], atol=1e-6)


def test_results_per_tracklet_and_plain_results_unchanged(client: Any) -> None:
    register(client, [0, 1, 2, 3])
    crops = [player_png(1), player_png(2, 1), player_png(1, 1), player_png(3)]
    plain = post_query(client, crops, top_k=2)
    assert plain.status_code == 200, plain.text
    plain_results = plain.json()["results"]
    assert len(plain_results) == 4
    assert all(r["tracklet"] is None and r["crops"] == 1 and r["threshold"] == 0.9 for r in plain_results)

    grouped = post_query(client, crops, top_k=2, tracklets=["p1", "p2", "p1", "p3"])
    assert grouped.status_code == 200, grouped.text
    results = grouped.json()["results"]
    assert [(r["tracklet"], r["crops"]) for r in results] == [("p1", 2), ("p2", 1), ("p3", 1)]
    assert results[0]["match"] == "player-1"
    # a tracklet of one crop answers exactly like the same crop sent plainly
    for result, expected in ((results[1], plain_results[1]), (results[2], plain_results[3])):
        assert [m["id"] for m in result["matches"]] == [m["id"] for m in expected["matches"]]
        assert [m["score"] for m in result["matches"]] == pytest.approx([m["score"] for m in expected["matches"]])
        assert result["match"] == expected["match"]
        # Scores agree to float32 rounding: the runtime may embed a crop differently in batches of other sizes.
        assert [c["label"] for c in result["candidates"]] == [c["label"] for c in expected["candidates"]]
        assert [c["score"] for c in result["candidates"]] == pytest.approx(
            [c["score"] for c in expected["candidates"]], abs=1e-5
        )


@pytest.mark.parametrize(
    ("tracklets", "code"),
    [(["a"], "tracklet_count_mismatch"), (["a", ""], "invalid_tracklet"), (["a", "b" * 200], "invalid_tracklet")],
)
def test_bad_tracklets_are_422_and_the_service_keeps_serving(client: Any, tracklets: list[str], code: str) -> None:
    register(client, [0])
    response = post_query(client, [player_png(0), player_png(1)], tracklets=tracklets)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == code and "tracklet" in body["detail"]
    assert post_query(client, [player_png(0)]).status_code == 200


def test_thresholds_per_query_size_and_the_override_wins(make_client: AppFactory, tmp_path: Path) -> None:
    # Size 1 accepts anything, 2+ accepts nothing short of a perfect score: the bucket must follow the crop count.
    checkpoint = make_tiny_checkpoint(
        tmp_path / "buckets.safetensors", threshold=0.9, thresholds={"1": -1.0, "2+": 1.0}
    )
    client = make_client(checkpoint=checkpoint)
    info = client.get("/info").json()
    assert info["thresholds_by_size"] == {"1": -1.0, "2+": 1.0} and info["threshold_source"] == "checkpoint"
    register(client, [0, 1])
    crops = [player_png(0, 1), player_png(0, 2), player_png(1, 1)]
    body = post_query(client, crops, tracklets=["two", "two", "one"]).json()
    two, one = body["results"]
    assert (two["crops"], two["threshold"], two["match"]) == (2, 1.0, None)
    assert (one["crops"], one["threshold"], one["match"]) == (1, -1.0, "player-1")
    assert body["threshold"] == -1.0  # the single-crop threshold
    overridden = post_query(client, crops, tracklets=["two", "two", "one"], threshold=0.0).json()
    assert [r["threshold"] for r in overridden["results"]] == [0.0, 0.0]
    assert overridden["results"][0]["match"] == "player-0"


def test_env_threshold_serves_every_size(make_client: AppFactory, tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "b.safetensors", thresholds={"1": 0.2, "2+": 0.3})
    client = make_client(checkpoint=checkpoint, threshold=-0.5)
    register(client, [0])
    body = post_query(client, [player_png(0), player_png(0, 1)], tracklets=["a", "a"]).json()
    assert body["results"][0]["threshold"] == -0.5 and body["threshold"] == -0.5
