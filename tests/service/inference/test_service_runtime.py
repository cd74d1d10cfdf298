"""REID_RUNTIME: onnxruntime by default on the CPU, the same embeddings as torch, threads, cache, and fallback.

The session-wide graph cache (tests/conftest.py) serves the tiny checkpoint; tests that need a missing or damaged
graph get their own empty cache folder and make the export fail, so no test here pays for a real export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.checkpoint import file_sha256
from model.export import MIN_COSINE
from service.core.settings import Settings
from service.inference.embedder import Embedder
from service.inference.imaging import ImageLimits, decode_crop
from service.inference.runtime import RuntimeUnavailable, cached_graph_path
from tests.support.images import player_png

AppFactory = Callable[..., Any]
LIMITS = ImageLimits(max_file_bytes=1 << 20, max_pixels=1 << 20, max_side=4096, min_side=4)


def _failing_export(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("aten::made_up_op is not supported")


def _crops(size: tuple[int, int], players: range) -> np.ndarray:
    """Real PNG player crops, decoded and resized by the service's own code: uint8 (B, 3, H, W)."""
    return np.stack([decode_crop(player_png(p, p % 3), p, None, size, LIMITS).pixels for p in players])


def test_auto_serves_with_onnxruntime_with_the_configured_threads(make_client: AppFactory) -> None:
    client = make_client(torch_threads=1)
    info = client.get("/info").json()
    assert info["runtime"] == "onnxruntime"
    assert "auto on CPU: cached graph" in info["runtime_reason"]
    assert "1 intra-op threads" in info["runtime_reason"]
    runtime = client.app.state.reid.embedder.runtime
    assert runtime.session.get_session_options().intra_op_num_threads == 1
    assert runtime.providers == ["CPUExecutionProvider"]


def test_onnxruntime_embeddings_equal_torch_ones(tiny_checkpoint: Path) -> None:
    cache = Path(Settings().onnx_cache_path)
    onnx = Embedder.from_checkpoint(tiny_checkpoint, "cpu", "onnxruntime", cache_dir=cache, threads=1)
    eager = Embedder.from_checkpoint(tiny_checkpoint, "cpu", "torch")
    assert (onnx.runtime.name, eager.runtime.name) == ("onnxruntime", "torch")
    crops = _crops(onnx.input_size, range(7))
    for batch in (crops[:1], crops):  # dynamic batch: 1 and 7
        got, expected = onnx.embed_batch(batch), eager.embed_batch(batch)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.min(np.sum(got * expected, axis=1)) >= MIN_COSINE
    # Seven different players: different embeddings, so the equality above is not between constants.
    assert np.max(got[0] @ got[1:].T) < 0.9999


def test_onnxruntime_keeps_the_batch_norm_statistics(tmp_path: Path) -> None:
    """The tiny checkpoint's BatchNorms are an identity, so a graph without them would still match it; this one
    has BatchNorm statistics and affine transforms far from the identity (one more export, a few seconds)."""
    from tests.support.checkpoints import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "bn.safetensors", bn_seed=3)
    onnx = Embedder.from_checkpoint(checkpoint, "cpu", "onnxruntime", cache_dir=tmp_path / "cache", threads=1)
    eager = Embedder.from_checkpoint(checkpoint, "cpu", "torch")
    identity = Embedder.from_checkpoint(make_tiny_checkpoint(tmp_path / "plain.safetensors"), "cpu", "torch")
    assert onnx.runtime.name == "onnxruntime"
    crops = _crops(onnx.input_size, range(5))
    got, expected = onnx.embed_batch(crops), eager.embed_batch(crops)
    assert np.min(np.sum(got * expected, axis=1)) >= MIN_COSINE
    # The same weights with identity BatchNorms embed visibly differently: a graph that lost them would fail above.
    assert np.min(np.sum(identity.embed_batch(crops) * expected, axis=1)) < MIN_COSINE


def test_export_failure_falls_back_to_torch_with_one_log_line(
    make_client: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.onnx, "export", _failing_export)
    with caplog.at_level(logging.INFO):
        client = make_client(onnx_cache_dir=tmp_path / "empty-cache")
    info = client.get("/info").json()
    assert info["runtime"] == "torch"
    assert "fell back to torch" in info["runtime_reason"] and "aten::made_up_op" in info["runtime_reason"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "service.inference.runtime"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "serving with torch" in message and "osnet_x0_25 does not export to ONNX" in message
    # ...and it serves.
    response = client.post(
        "/gallery", files=[("files", ("a.png", player_png(1), "image/png"))], data={"collection": "c", "labels": "x"}
    )
    assert response.status_code == 201, response.text


def test_explicit_onnxruntime_that_cannot_export_fails_start_up(
    make_client: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.onnx, "export", _failing_export)
    with pytest.raises(RuntimeUnavailable, match="does not export to ONNX"):
        make_client(runtime="onnxruntime", onnx_cache_dir=tmp_path / "empty-cache")


def test_a_damaged_cached_graph_is_not_served(
    make_client: AppFactory,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "damaged-cache"
    graph = cached_graph_path(cache, file_sha256(tiny_checkpoint))
    graph.parent.mkdir(parents=True)
    graph.write_bytes(b"not an onnx graph")
    # A damaged graph is exported again; with the export failing too, the service falls back to torch.
    monkeypatch.setattr(torch.onnx, "export", _failing_export)
    with caplog.at_level(logging.WARNING):
        client = make_client(onnx_cache_dir=cache)
    assert client.get("/info").json()["runtime"] == "torch"
    assert any("ignoring cached ONNX graph" in r.getMessage() for r in caplog.records)


def test_torch_runtime_on_request(make_client: AppFactory) -> None:
    info = make_client(runtime="torch").get("/info").json()
    assert (info["runtime"], info["runtime_reason"]) == ("torch", "REID_RUNTIME=torch")
