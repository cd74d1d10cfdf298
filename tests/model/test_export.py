"""ONNX export of every architecture: the graph reproduces torch's embeddings at several batch sizes.

Tiny inputs (32x16) and random weights with randomised batch-norm statistics, so a graph exported in training
mode (batch statistics) or with the normalisation left out would not match. Each export takes 10-50 s of a
shared 2-core machine, so the default run covers pose_bilinear (whose ResNet-50 backbone, OpenPose stream and
Tensor Sketch cover the layer types of resnet50) here, and osnet_x0_25 through the service's graph of the tiny
checkpoint (tests/service/inference/test_service_runtime.py, tests/training/test_cli.py); RUN_SLOW_TESTS=1 adds
osnet_x0_25, osnet_x1_0 and resnet50 here. The service checks every graph it exports against torch before serving it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import build_model
from model.checkpoint import spec_for
from model.export import (
    EXPORT_VERSION,
    EXPORT_VERSION_KEY,
    FINGERPRINT_KEY,
    INPUT_NAME,
    MIN_COSINE,
    OnnxExportError,
    export_onnx,
    read_onnx_metadata,
    spec_from_metadata,
)

ort = pytest.importorskip("onnxruntime")

INPUT_SIZE = (32, 16)

_SLOW = pytest.mark.skipif(
    os.environ.get("RUN_SLOW_TESTS") != "1", reason="another minute of export: set RUN_SLOW_TESTS=1 to run it"
)
ARCHITECTURES = [
    pytest.param("osnet_x0_25", {}, id="osnet_x0_25", marks=_SLOW),
    pytest.param("pose_bilinear", {"pose_stages": 1, "embedding_dim": 64}, id="pose_bilinear"),
    # The default model's layout: OSNet-x0.25 + EfficientPose-RT part maps (TensorFlow-style padding, fixed
    # bilinear upsampling, squeeze-excite gates).
    pytest.param(
        "pose_bilinear",
        {"appearance": "osnet_x0_25", "pose": "efficientpose_rt", "pose_output": "parts", "embedding_dim": 64},
        id="pose_bilinear_osnet_efficientpose",
    ),
    pytest.param("osnet_x1_0", {"neck": "none"}, id="osnet_x1_0", marks=_SLOW),
    pytest.param("resnet50", {"layer_wise": ["layer3"]}, id="resnet50", marks=_SLOW),
]


def _randomise_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            assert module.running_var is not None
            module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "config"), ARCHITECTURES)
def test_exported_graph_matches_torch(name: str, config: dict[str, Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=0, input_size=INPUT_SIZE, **config).eval()
    _randomise_batch_norm(model)
    spec = spec_for(model, threshold=0.6, metrics={"mAP": 0.5})
    state_keys = set(model.state_dict())
    path = export_onnx(model, spec, tmp_path / f"{name}.onnx", fingerprint="ab" * 32, verify=False)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert (graph_input.name, graph_input.type) == (INPUT_NAME, "tensor(uint8)")
    rng = np.random.default_rng(0)
    for batch in (1, 5):  # neither is the traced batch size (2)
        crops = rng.integers(0, 256, size=(batch, 3, *INPUT_SIZE), dtype=np.uint8)
        with torch.inference_mode():
            expected = model.embed(torch.from_numpy(crops)).numpy()
        (got,) = session.run(None, {INPUT_NAME: crops})
        assert got.shape == (batch, spec.embedding_dim) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert _cosines(got, expected).min() >= MIN_COSINE
    # Different crops give different embeddings: the comparison above is not between constants.
    assert _cosines(got[:1], got[1:2])[0] < 0.9999

    metadata = read_onnx_metadata(path)
    assert spec_from_metadata(metadata) == spec
    assert metadata[FINGERPRINT_KEY] == "ab" * 32 and metadata[EXPORT_VERSION_KEY] == str(EXPORT_VERSION)
    # The export leaves the model as it found it (pose_bilinear's sketch back on torch.fft, no extra tensors).
    assert set(model.state_dict()) == state_keys
    assert all(getattr(m, "spectral", "fft") == "fft" for m in model.modules())
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_export_raises_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("osnet_x0_25", num_classes=0, input_size=INPUT_SIZE).eval()

    def unsupported(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("aten::made_up_op is not supported")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(OnnxExportError, match="osnet_x0_25: ONNX export failed: RuntimeError: aten::made_up_op"):
        export_onnx(model, spec_for(model), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
