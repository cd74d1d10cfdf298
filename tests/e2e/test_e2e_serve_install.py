"""The serving install serves real crops without torch, and answers as the torch path does.

A fresh venv with only the `serve` extra (made by `make install-serve`, the recipe `make serve` uses; stamped, so
a second run reuses it), with no torch in it at all; the checkpoint of the real OSNet-x0.25 Market-1501 weights
(../shared/data) exported with `reid-export --format onnx` (graph and checkpoint side by side); `reid-serve` from
that venv on the graph; 20 CUHK03 people registered from camera A and queried from camera B over HTTP. Every
score it answers is compared with the same crops embedded by torch in this process (cosine of the score lists
>= 0.9999, each score within 1e-3, same ranking).

REID_TEST_SERVE_VENV=/path/to/venv reuses an existing serving venv instead. Skips cleanly without
../shared/data or make.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model import save_checkpoint
from model.graph import FINGERPRINT_KEY, read_graph_metadata
from model.spec import file_sha256
from service.inference.embedder import Embedder
from service.inference.imaging import ImageLimits, decode_crop
from tests.support.images import files_field
from tests.support.live_server import LiveServer, server_env
from training.cli import export_main

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

ROOT = Path(__file__).resolve().parents[2]
PEOPLE = 20


@pytest.fixture(scope="module")
def serve_venv() -> Path:
    given = os.environ.get("REID_TEST_SERVE_VENV")
    if given:
        return Path(given)
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = ROOT / ".venv-serve"
    python = shutil.which("python3.11") or sys.executable
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "install-serve", f"SERVE_VENV={venv}", f"PYTHON={python}"],
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return venv


def test_serve_install_answers_like_torch_without_torch(
    serve_venv: Path, osnet_x0_25_market_weights: Path, cuhk03_dir: Path, tmp_path: Path
) -> None:
    python = serve_venv / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime'))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    torch_spec, onnxruntime_spec = probe.stdout.split(maxsplit=1)
    assert torch_spec == "None", f"torch is installed in the serving venv: {probe.stdout}"
    assert onnxruntime_spec.strip() != "None"

    torchreid_import = pytest.importorskip("model.torchreid_import")
    model = torchreid_import.load_torchreid_checkpoint(osnet_x0_25_market_weights, arch="osnet_x0_25")
    checkpoint = tmp_path / "models" / "osnet.safetensors"
    save_checkpoint(model, checkpoint, train_meta={"source": "torchreid model zoo, Market-1501"})
    assert export_main([str(checkpoint), "--format", "onnx"]) == 0
    graph = checkpoint.with_suffix(".onnx")
    assert read_graph_metadata(graph)[FINGERPRINT_KEY] == file_sha256(checkpoint)

    pids = sorted({p.name.split("_")[0] for p in cuhk03_dir.glob("*_00.jpg")})[:PEOPLE]
    gallery = [(cuhk03_dir / f"{pid}_00.jpg").read_bytes() for pid in pids]
    probes = [(cuhk03_dir / f"{pid}_05.jpg").read_bytes() for pid in pids]

    env = server_env(
        graph,
        tmp_path / "data",
        REID_DEVICE="auto",  # no torch to ask for a GPU: auto must settle on the CPU by itself
        REID_ONNX_CACHE_DIR=str(tmp_path / "no-cache"),  # the shipped graph is served, nothing is exported
        REID_TORCH_THREADS="2",
    )
    server = LiveServer(env, python=str(python), use_cli=True, log_path=tmp_path / "server.log", ready_timeout_s=300)
    with server, server.client(timeout=300) as client:
        added = client.post(
            "/gallery", files=files_field(*gallery), data={"collection": "cuhk03", "labels": pids}
        )
        assert added.status_code == 201, added.text
        ids = [item["id"] for item in added.json()["items"]]
        answered = client.post("/query", files=files_field(*probes), data={"collection": "cuhk03", "top_k": 5})
        assert answered.status_code == 200, answered.text
        info = client.get("/info").json()
    assert info["runtime"] == "onnxruntime" and "shipped graph osnet.onnx" in info["runtime_reason"]
    assert not list((tmp_path / "no-cache").glob("*.onnx")), "the graph was exported again instead of served"
    assert "Traceback" not in server.logs()

    # The torch path on the same decoded pixels (the service's decoder), in this process.
    eager = Embedder.from_checkpoint(checkpoint, "cpu", "torch")
    limits = ImageLimits(max_file_bytes=10_000_000, max_pixels=10_000_000, max_side=4096, min_side=8)

    def embed(blobs: list[bytes]) -> np.ndarray:
        pixels = [decode_crop(b, i, f"file {i}", eager.input_size, limits).pixels for i, b in enumerate(blobs)]
        return eager.embed_batch(np.stack(pixels))

    expected_scores = embed(probes) @ embed(gallery).T  # (PEOPLE, PEOPLE), rows: queries
    index = {item_id: i for i, item_id in enumerate(ids)}
    for row, result in enumerate(answered.json()["results"]):
        got = np.array([m["score"] for m in result["matches"]])
        reference = expected_scores[row, [index[m["id"]] for m in result["matches"]]]
        cosine = float(got @ reference / (np.linalg.norm(got) * np.linalg.norm(reference)))
        assert cosine >= 0.9999 and np.max(np.abs(got - reference)) <= 1e-3, (row, got, reference)
        assert result["matches"][0]["id"] == ids[int(np.argmax(expected_scores[row]))]
