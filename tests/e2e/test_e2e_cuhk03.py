"""Real data through a real server: torchreid OSNet-x0.25 (Market-1501 weights) imported from ../shared/data,
camera-A crops of 100 CUHK03 people registered, their camera-B crops queried; rank-1 is printed and checked.

Skips cleanly when ../shared/data (or the model team's importer) is absent.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import save_checkpoint
from tests.support.images import files_field
from tests.support.live_server import LiveServer, server_env

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

PEOPLE = 100
CHUNK = 25  # files per request


def reference_rank1(model: torch.nn.Module, gallery: list[Path], probes: list[Path]) -> float:
    """Rank-1 computed in-process, without the service: PIL bilinear resize (the training eval transform)."""

    def embed(paths: list[Path]) -> np.ndarray:
        crops = [
            np.asarray(Image.open(p).convert("RGB").resize((128, 256), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
            for p in paths
        ]
        return model.embed(torch.from_numpy(np.stack(crops))).numpy()  # type: ignore[operator]

    scores = embed(probes) @ embed(gallery).T
    return float((scores.argmax(axis=1) == np.arange(len(probes))).mean())


def test_cuhk03_cross_camera_rank1(osnet_x0_25_market_weights: Path, cuhk03_dir: Path, tmp_path: Path) -> None:
    torchreid_import = pytest.importorskip("model.torchreid_import")
    model = torchreid_import.load_torchreid_checkpoint(osnet_x0_25_market_weights, arch="osnet_x0_25")
    checkpoint = tmp_path / "osnet_x0_25_market.safetensors"
    save_checkpoint(model, checkpoint, train_meta={"source": "torchreid model zoo, Market-1501"})

    pids = sorted({p.name.split("_")[0] for p in cuhk03_dir.glob("*_00.jpg")})[:PEOPLE]
    assert len(pids) == PEOPLE
    gallery = [(pid, (cuhk03_dir / f"{pid}_00.jpg").read_bytes()) for pid in pids]
    probes = [(pid, (cuhk03_dir / f"{pid}_05.jpg").read_bytes()) for pid in pids]

    env = server_env(checkpoint, tmp_path / "data", REID_MAX_BATCH_SIZE="32", REID_TORCH_THREADS="2")
    # This checkpoint is new to the server, so its start includes the ONNX export (seconds; minutes on a busy CPU).
    server = LiveServer(env, log_path=tmp_path / "server.log", ready_timeout_s=300)
    with server, server.client(timeout=300) as client:
        for start in range(0, PEOPLE, CHUNK):
            part = gallery[start : start + CHUNK]
            response = client.post(
                "/gallery",
                files=files_field(*(data for _, data in part), names=[f"{pid}_00.jpg" for pid, _ in part]),
                data={"collection": "cuhk03", "labels": [pid for pid, _ in part]},
            )
            assert response.status_code == 201, response.text
        assert client.get("/gallery", params={"collection": "cuhk03"}).json()["total"] == PEOPLE

        hits = 0
        begin = time.perf_counter()
        for start in range(0, PEOPLE, CHUNK):
            part = probes[start : start + CHUNK]
            response = client.post(
                "/query", files=files_field(*(data for _, data in part)), data={"collection": "cuhk03", "top_k": 5}
            )
            assert response.status_code == 200, response.text
            for (pid, _), result in zip(part, response.json()["results"], strict=True):
                hits += result["matches"][0]["label"] == pid
        elapsed = time.perf_counter() - begin
        info = client.get("/info").json()

    rank1 = hits / PEOPLE
    expected = reference_rank1(
        model, [cuhk03_dir / f"{pid}_00.jpg" for pid in pids], [cuhk03_dir / f"{pid}_05.jpg" for pid in pids]
    )
    print(
        f"CUHK03 camera A -> B, {PEOPLE} people, OSNet-x0.25 (Market-1501) via the service: "
        f"rank-1 = {rank1:.3f} (in-process reference {expected:.3f}, chance {1 / PEOPLE:.3f}); "
        f"{PEOPLE} queries in {elapsed:.1f} s; threshold {info['threshold']} ({info['threshold_source']})"
    )
    # Market-1501 weights on CUHK03 are cross-domain: well above chance, not near Market's own numbers.
    assert rank1 > 0.2
    # The service's decoding and batching must not cost accuracy against the plain in-process pipeline.
    assert abs(rank1 - expected) <= 0.02
