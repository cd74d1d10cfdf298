"""Tracklet queries on real crops through a real uvicorn process: OSNet-x0.25 (torchreid Market-1501 weights,
imported from ../shared/data), one camera-A crop of each of 50 CUHK03 people registered, their five camera-B
crops queried as one tracklet each and, for comparison, one by one. Skips cleanly without ../shared/data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from model import save_checkpoint
from tests.support.images import files_field
from tests.support.live_server import LiveServer, server_env

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

PEOPLE = 50
PER_REQUEST = 10  # people per request: 10 tracklets of 5 crops, or 50 plain crops
CAMERA_B = ("05", "06", "07", "08", "09")


def post_query(
    client: httpx.Client, paths: list[Path], tracklets: list[str] | None = None, top_k: int = 5
) -> list[dict[str, Any]]:
    data: dict[str, Any] = {"collection": "cuhk03", "top_k": top_k}
    if tracklets is not None:
        data["tracklets"] = tracklets
    response = client.post("/query", files=files_field(*(p.read_bytes() for p in paths)), data=data)
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


def test_tracklet_queries_on_cuhk03(osnet_x0_25_market_weights: Path, cuhk03_dir: Path, tmp_path: Path) -> None:
    torchreid_import = pytest.importorskip("model.torchreid_import")
    model = torchreid_import.load_torchreid_checkpoint(osnet_x0_25_market_weights, arch="osnet_x0_25")
    checkpoint = tmp_path / "osnet_x0_25_market.safetensors"
    save_checkpoint(model, checkpoint, train_meta={"source": "torchreid model zoo, Market-1501"})
    every = sorted({p.name.split("_")[0] for p in cuhk03_dir.glob("*_00.jpg")})
    # the first PEOPLE identities with all five camera-B crops (a few have fewer)
    pids = [pid for pid in every if all((cuhk03_dir / f"{pid}_{i}.jpg").is_file() for i in CAMERA_B)][:PEOPLE]
    assert len(pids) == PEOPLE
    crops = {pid: [cuhk03_dir / f"{pid}_{i}.jpg" for i in CAMERA_B] for pid in pids}

    env = server_env(checkpoint, tmp_path / "data", REID_MAX_BATCH_SIZE="32", REID_TORCH_THREADS="2")
    with LiveServer(env, log_path=tmp_path / "server.log") as server, server.client(timeout=300) as client:
        for start in range(0, PEOPLE, 25):
            part = pids[start : start + 25]
            response = client.post(
                "/gallery",
                files=files_field(*((cuhk03_dir / f"{pid}_00.jpg").read_bytes() for pid in part)),
                data={"collection": "cuhk03", "labels": part},
            )
            assert response.status_code == 201, response.text

        single_hits, tracklet_hits = 0, 0
        plain: dict[Path, dict[str, Any]] = {}
        for start in range(0, PEOPLE, PER_REQUEST):
            people = pids[start : start + PER_REQUEST]
            # crop j of every person, then crop j+1: each tracklet's crops are spread over the request
            paths = [crops[pid][j] for j in range(len(CAMERA_B)) for pid in people]
            owners = [pid for _ in CAMERA_B for pid in people]
            results = post_query(client, paths)  # no `tracklets`: one result per file, as before
            assert len(results) == len(paths)
            assert all(r["tracklet"] is None and r["crops"] == 1 for r in results)
            single_hits += sum(r["matches"][0]["label"] == pid for r, pid in zip(results, owners, strict=True))
            plain.update(zip(paths, results, strict=True))

            pooled = post_query(client, paths, tracklets=[f"track-{pid}" for pid in owners])
            assert [(r["tracklet"], r["crops"]) for r in pooled] == [(f"track-{pid}", 5) for pid in people]
            tracklet_hits += sum(r["matches"][0]["label"] == pid for r, pid in zip(pooled, people, strict=True))

        # mixed: two 2-crop tracklets and a 1-crop one, interleaved; answers in order of first appearance
        a, b, c = pids[:3]
        mixed_paths = [crops[a][0], crops[b][0], crops[a][1], crops[c][0], crops[b][1]]
        mixed = post_query(client, mixed_paths, tracklets=[a, b, a, c, b], top_k=PEOPLE)
        each = post_query(client, mixed_paths, top_k=PEOPLE)

    assert [(r["tracklet"], r["crops"]) for r in mixed] == [(a, 2), (b, 2), (c, 1)]
    # pooled = normalised mean of unit crops, so its score on every gallery item is the mean of the two crops'
    # scores divided by one constant (the norm of their mean): check it over the whole gallery
    for result, (first, second) in ((mixed[0], (each[0], each[2])), (mixed[1], (each[1], each[4]))):
        pooled = {m["id"]: m["score"] for m in result["matches"]}
        mean = {m["id"]: m["score"] / 2 for m in first["matches"]}
        for m in second["matches"]:
            mean[m["id"]] += m["score"] / 2
        assert len(pooled) == PEOPLE
        ratios = [pooled[i] / mean[i] for i in pooled if abs(mean[i]) > 0.05]
        assert max(ratios) - min(ratios) < 1e-3 and min(ratios) > 1.0
    alone, reference = mixed[2], plain[crops[c][0]]
    assert [m["id"] for m in alone["matches"][:5]] == [m["id"] for m in reference["matches"]]
    expected = [m["score"] for m in reference["matches"]]
    assert [m["score"] for m in alone["matches"][:5]] == pytest.approx(expected, abs=1e-4)
    single_rank1 = single_hits / (PEOPLE * len(CAMERA_B))
    tracklet_rank1 = tracklet_hits / PEOPLE
    print(
        f"CUHK03 camera A (1 crop each) -> camera B, {PEOPLE} people, OSNet-x0.25 (Market-1501) via the service: "
        f"single-crop rank-1 {single_rank1:.3f} (mean over {PEOPLE * len(CAMERA_B)} crops), "
        f"5-crop tracklet rank-1 {tracklet_rank1:.3f}"
    )
    assert tracklet_rank1 > single_rank1
