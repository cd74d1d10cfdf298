"""Serving without torch: a checkpoint travels with its ONNX graph, the service serves the graph without importing
torch, and what cannot be served says which command fixes it, before any model loads (reid-serve's checks).

The proof on a real install without torch (a fresh venv with the `serve` extra only, real crops) is
tests/e2e/test_e2e_serve_install.py; these tests run in the full install and are fast.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.graph import FINGERPRINT_KEY, read_graph_metadata
from model.spec import file_sha256
from service.cli import serve_main
from service.gallery.base import NewItem
from service.gallery.local.store import GalleryStore
from service.inference import runtime
from service.inference.runtime import ServingSetupError, cached_graph_path, check_servable, load_runtime
from tests.support.checkpoints import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def shipped(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint and its graph side by side, as reid-export --format onnx leaves them; returns the graph."""
    import os

    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint, folder / "tiny.safetensors")
    cached = cached_graph_path(Path(os.environ["REID_ONNX_CACHE_DIR"]), file_sha256(tiny_checkpoint))
    shutil.copyfile(cached, folder / "tiny.onnx")
    return folder / "tiny.onnx"


def test_graph_metadata_is_read_without_onnx(shipped: Path) -> None:
    from model.export import read_onnx_metadata

    assert read_graph_metadata(shipped) == read_onnx_metadata(shipped)
    assert read_graph_metadata(shipped)[FINGERPRINT_KEY] == file_sha256(shipped.with_suffix(".safetensors"))


def test_serving_a_shipped_graph_imports_no_torch(shipped: Path, tmp_path: Path) -> None:
    """The whole path, app start to a registered and queried crop, in a process that checks sys.modules."""
    script = f"""
import io, json, sys
from pathlib import Path
from PIL import Image
from fastapi.testclient import TestClient
from service.app import create_app
from service.core.settings import Settings

settings = Settings(checkpoint=Path({str(shipped)!r}), data_dir=Path({str(tmp_path / "data")!r}), device="cpu",
                    onnx_cache_dir=Path({str(tmp_path / "empty-cache")!r}), warmup_batches=1)
png = io.BytesIO()
Image.new("RGB", (32, 64), (200, 30, 30)).save(png, format="PNG")
files = [("files", ("a.png", png.getvalue(), "image/png"))]
with TestClient(create_app(settings)) as client:
    added = client.post("/gallery", files=files, data={{"collection": "c", "labels": ["a"]}})
    found = client.post("/query", files=files, data={{"collection": "c"}})
    info = client.get("/info").json()
print(json.dumps({{"torch": "torch" in sys.modules, "added": added.status_code, "found": found.json(),
                   "runtime": info["runtime_reason"]}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["added"] == 201
    assert result["found"]["results"][0]["matches"][0]["label"] == "a"
    assert "shipped graph tiny.onnx" in result["runtime"]
    assert result["torch"] is False


def test_checkpoint_alone_without_torch_names_the_export_command(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "torch_installed", lambda: False)
    alone = tmp_path / "alone.safetensors"
    shutil.copyfile(tiny_checkpoint, alone)
    empty = tmp_path / "empty-cache"
    with pytest.raises(ServingSetupError) as found:
        check_servable(alone, "auto", empty)
    message = str(found.value)
    assert f"reid-export {alone} --format onnx" in message and "make install" in message
    # The slow path (load_runtime) says the same, for callers that skip the check.
    with pytest.raises(ServingSetupError, match="--format onnx"):
        load_runtime(alone, runtime.ServingDevice("cpu"), "auto", cache_dir=empty)


def test_graph_of_another_checkpoint_is_refused(shipped: Path) -> None:
    make_tiny_checkpoint(shipped.with_suffix(".safetensors"), seed=1)  # retrained, graph not exported again
    with pytest.raises(ServingSetupError, match="exported from another checkpoint") as found:
        check_servable(shipped, "auto", shipped.parent / "cache")
    assert "--format onnx" in str(found.value)
    with pytest.raises(ServingSetupError, match="exported from another checkpoint"):
        load_runtime(shipped, runtime.ServingDevice("cpu"), "auto", cache_dir=shipped.parent / "cache")


def test_graph_alone_serves_with_the_fingerprint_it_carries(shipped: Path) -> None:
    expected = file_sha256(shipped.with_suffix(".safetensors"))
    shipped.with_suffix(".safetensors").unlink()
    files, fingerprint = check_servable(shipped, "auto", shipped.parent / "cache")
    assert (files.checkpoint, files.graph, fingerprint) == (None, shipped, expected)
    loaded = load_runtime(shipped, runtime.ServingDevice("cpu"), "auto", cache_dir=shipped.parent / "cache")
    assert loaded.fingerprint == expected and loaded.runtime.name == "onnxruntime"
    with pytest.raises(ServingSetupError, match="needs the checkpoint"):
        check_servable(shipped, "torch", shipped.parent / "cache")


def test_taken_port_fails_before_anything_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was checked before the port")

    monkeypatch.setattr("service.cli.check_servable", must_not_run)
    monkeypatch.setenv("REID_CHECKPOINT", str(tmp_path / "model.onnx"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as found:
            serve_main(["--port", str(port)])
    assert f"port {port} on 127.0.0.1 is already in use" in str(found.value)
    assert f"make serve PORT={port + 1}" in str(found.value)


def test_data_folder_of_another_model_is_refused_with_the_commands(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    store = GalleryStore(data / "gallery.sqlite3", 512, "a" * 64)
    unit = np.zeros(512, dtype=np.float32)
    unit[0] = 1.0
    store.insert_items("c", [NewItem("x", {}, "0" * 64, unit)])
    store.close()
    monkeypatch.setenv("REID_CHECKPOINT", str(shipped))
    monkeypatch.setenv("REID_DATA_DIR", str(data))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SystemExit) as found:
        serve_main(["--port", str(port)])
    message = str(found.value)
    fingerprint = file_sha256(shipped.with_suffix(".safetensors"))
    assert f"REID_DATA_DIR={data} holds 1 gallery item(s) of another model (aaaaaaaaaaaa...)" in message
    assert f"REID_DATA_DIR={data}-{fingerprint[:8]} REID_CHECKPOINT={shipped.with_suffix('.safetensors')}" in message
    assert f"reid-reindex --data-dir {data} --checkpoint {shipped.with_suffix('.safetensors')}" in message


def test_model_spec_and_service_modules_import_without_torch() -> None:
    script = (
        "import sys; import model, model.spec, model.graph, model.thresholds, model.pooling, service.app, "
        "service.cli, service.gallery.local.reindex; print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
