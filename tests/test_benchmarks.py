"""Smoke tests: every benchmark script runs with --quick on toy sizes and writes the JSON it promises.

No timing is asserted (benchmarks are scripts, not tests); only keys and sane values.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks import (
    embed_throughput,
    index_lifecycle,
    index_scale,
    profile_hot_path,
    runtime_compare,
    service_load,
    service_vs_raw,
)

pytestmark = pytest.mark.slow


def _run(main: Any, out: Path) -> dict[str, Any]:
    assert main(["--quick", "--out", str(out), "--log-level", "WARNING"]) == 0
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["quick"] is True
    assert data["machine"]["cpu_count"] >= 1
    return data


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_embed_throughput_quick(tmp_path: Path) -> None:
    data = _run(embed_throughput.main, tmp_path / "embed.json")
    assert {(r["architecture"], r["channels_last"]) for r in data["rows"]} == {
        ("osnet_x0_25", False),
        ("osnet_x0_25", True),
    }
    assert all(_positive(r["crops_per_s"]) and r["embedding_dim"] == 512 for r in data["rows"])


def test_index_scale_quick(tmp_path: Path) -> None:
    data = _run(index_scale.main, tmp_path / "index.json")
    kinds = {r["index"] for r in data["rows"]}
    assert kinds == {"flat", "ivf", "hnsw"}
    for row in data["rows"]:
        assert _positive(row["qps"]) and _positive(row["memory_mib"])
        assert 0.0 <= row["recall_at_10"] <= 1.0
    assert next(r for r in data["rows"] if r["index"] == "flat")["recall_at_10"] == 1.0
    (rebuild,) = data["rebuild"]
    assert rebuild["rebuild_flat_only_kind"] == "flat"
    assert _positive(rebuild["rebuild_service_default_s"])


def test_index_lifecycle_quick(tmp_path: Path) -> None:
    data = _run(index_lifecycle.main, tmp_path / "lifecycle.json")
    assert data["kind_after_build"] == "hnsw" and data["n"] == 3000
    for key in ("build_s", "query_ms_p50_idle", "restart_s_snapshot", "restart_s_rebuild", "restart_s_rebuild_hnsw"):
        assert _positive(data[key]), key
    assert data["snapshot_mib"] > 0 and "index_rss_mib" in data and "query_ms_max_during_build" in data


def test_profile_hot_path_quick(tmp_path: Path) -> None:
    data = _run(profile_hot_path.main, tmp_path / "profile.json")
    assert all(_positive(ms) for ms in data["stages_ms"].values())
    assert _positive(data["http_request_ms"])
    assert data["forward_share"] > 0


def test_service_load_quick(tmp_path: Path) -> None:
    data = _run(service_load.main, tmp_path / "service.json")
    assert _positive(data["raw"]["best_crops_per_s"])
    modes = {(p["mode"], p["crops_per_request"], p["concurrency"]) for p in data["points"]}
    assert ("unbatched", 1, 4) in modes and ("batched", 4, 1) in modes
    # the multi-crop request made of tracklets (2 of 2 in quick mode) ran without errors
    assert [p["tracklets"] for p in data["points"] if p["tracklets"]] == [2]
    assert _positive(data["ratios"]["tracklets_over_plain_at_c1"])
    for point in data["points"]:
        assert point["errors"] == 0 and point["requests"] >= 1
        assert _positive(point["crops_per_s"]) and point["p50_ms"] <= point["p99_ms"]
        assert 1 <= point["mean_batch_size"] <= point["max_batch_size"]
    assert _positive(data["ratios"]["service_over_raw_at_saturation"])
    assert _positive(data["ratios"]["batched_over_unbatched_at_c4"])


def test_runtime_compare_quick(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # The tiny checkpoint's graph is already in the session cache: no second export.
    cache = ["--checkpoint", str(tiny_checkpoint), "--onnx-cache-dir", os.environ["REID_ONNX_CACHE_DIR"]]
    data = _run(lambda argv: runtime_compare.main([*argv, *cache]), tmp_path / "runtimes.json")
    assert set(data["raw"]) == {"torch", "onnxruntime"}
    assert [r["measure"] for r in data["rows"]][:2] == ["raw embed_batch, batch 1", "raw embed_batch, batch 4"]
    for row in data["rows"]:
        assert _positive(row["torch"]) and _positive(row["onnxruntime"]) and _positive(row["ratio"])
    for points in data["points"].values():
        assert all(p["errors"] == 0 and p["requests"] >= 1 for p in points)


def test_service_vs_raw_quick(tmp_path: Path) -> None:
    # Absent weights and crops: random weights and synthetic JPEGs, so this runs outside the workplace too.
    absent = ["--weights", str(tmp_path / "none.pth"), "--tar", str(tmp_path / "none.tar"), "--gallery", "40"]
    data = _run(lambda argv: service_vs_raw.main([*argv, *absent]), tmp_path / "vs_raw.json")
    for key in ("raw_crops_s", "service_crops_s_32x2", "service_crops_s_1x32", "floor_crops_s_32x2"):
        assert _positive(data[key]), key
    for load in data["best"].values():
        assert load["errors"] == 0 and load["requests"] >= 1
        assert load["p50_ms"] <= load["p99_ms"] <= load["p999_ms"]
    assert set(data["best"]["service_1x32"]["stages"]) == {"receive", "decode", "embed", "search", "respond"}
