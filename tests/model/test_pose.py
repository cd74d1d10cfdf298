"""OpenPose body pose stream: output modes, CMU / torchvision / own weight loading, the input convention."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from model.pose import OUTPUT_MODES, OpenPoseBody, convert_cmu_body_state_dict, vgg19_front_from_torchvision

# The CMU COCO body model written out from its documented layer list (OpenPose prototxt, body_pose_model.pth)
# kept independent of model/pose.py so a wrong table there cannot agree with itself here.
CMU_FRONT = [
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    ("conv3_1", 128, 256),
    ("conv3_2", 256, 256),
    ("conv3_3", 256, 256),
    ("conv3_4", 256, 256),
    ("conv4_1", 256, 512),
    ("conv4_2", 512, 512),
    ("conv4_3_CPM", 512, 256),
    ("conv4_4_CPM", 256, 128),
]


def cmu_layers(stages: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(CMU layer name, weight shape (out, in, k, k)) in the order front, then per stage L1 (PAF) then L2."""
    layers = [(name, (c_out, c_in, 3, 3)) for name, c_in, c_out in CMU_FRONT]
    for stage in range(1, stages + 1):
        for branch, out in (("L1", 38), ("L2", 19)):
            if stage == 1:
                convs = [(128, 128, 3), (128, 128, 3), (128, 128, 3), (128, 512, 1), (512, out, 1)]
                names = [f"conv5_{j}_CPM_{branch}" for j in range(1, 6)]
            else:
                convs = [(185, 128, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1), (128, out, 1)]
                names = [f"Mconv{j}_stage{stage}_{branch}" for j in range(1, 8)]
            layers += [(n, (c_out, c_in, k, k)) for n, (c_in, c_out, k) in zip(names, convs, strict=True)]
    return layers


def cmu_state_dict(stages: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in cmu_layers(stages):
        state[f"{name}.weight"] = torch.randn(shape, generator=generator) * 0.01
        state[f"{name}.bias"] = torch.randn(shape[0], generator=generator) * 0.01
    return state


def conv(pose: OpenPoseBody, path: str) -> nn.Conv2d:
    module = pose.get_submodule(path)
    assert isinstance(module, nn.Conv2d)
    return module


def has(pose: OpenPoseBody, path: str) -> bool:
    try:
        pose.get_submodule(path)
    except AttributeError:
        return False
    return True


@pytest.fixture(scope="module")
def cmu_three_stages() -> dict[str, torch.Tensor]:
    return cmu_state_dict(3)


@pytest.mark.parametrize("stages", [1, 2, 6])
@pytest.mark.parametrize(("output", "channels"), [("parts", 19), ("pafs", 38), ("parts+pafs", 57), ("features", None)])
def test_output_shapes(stages: int, output: str, channels: int | None) -> None:
    torch.manual_seed(0)
    pose = OpenPoseBody(stages=stages, output=output).eval()
    expected = channels if channels is not None else (512 if stages == 1 else 128)
    assert pose.out_channels == expected
    with torch.no_grad():
        out = pose(torch.rand(2, 3, 64, 32))
    assert out.shape == (2, expected, 64 // pose.stride, 32 // pose.stride)
    assert torch.isfinite(out).all()


def test_last_stage_builds_only_the_branches_its_output_reads() -> None:
    # An unused conv would leave parameters without gradient (DDP would fail) and waste time.
    cases = [("parts", False, True, True), ("pafs", True, False, False), ("features", False, True, False)]
    for output, paf, parts, parts_head in cases:
        pose = OpenPoseBody(stages=2, output=output)
        assert has(pose, "stages.0.paf.convs.4") and has(pose, "stages.0.parts.convs.4")
        assert has(pose, "stages.1.paf.convs.6") == paf
        assert has(pose, "stages.1.parts.convs.5") == parts
        assert has(pose, "stages.1.parts.convs.6") == parts_head
        pose(torch.rand(1, 3, 32, 16)).sum().backward()
        assert all(p.grad is not None for p in pose.parameters())


def test_full_six_stage_model_has_the_cmu_parameter_count() -> None:
    pose = OpenPoseBody(stages=6, output="parts+pafs")
    expected = sum(w[0] * w[1] * w[2] * w[3] + w[0] for _, w in cmu_layers(6))
    assert sum(p.numel() for p in pose.parameters()) == expected == 52_311_446


def test_output_modes_agree_when_sharing_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    both = OpenPoseBody(stages=2, output="parts+pafs").eval()
    path = tmp_path / "pose.safetensors"
    save_file(both.state_dict(), str(path))
    parts = OpenPoseBody(stages=2, output="parts", weights=path).eval()
    pafs = OpenPoseBody(stages=2, output="pafs", weights=path).eval()
    features = OpenPoseBody(stages=2, output="features", weights=path).eval()
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        joint = both(x)
        torch.testing.assert_close(parts(x), joint[:, :19])
        torch.testing.assert_close(pafs(x), joint[:, 19:])
        hidden = features(x)
        assert (hidden >= 0).all()  # post-ReLU activation
        # "features" is exactly what the last part conv (Mconv7_stage2_L2) turns into the part maps.
        torch.testing.assert_close(conv(parts, "stages.1.parts.convs.6")(hidden), joint[:, :19])


def test_cmu_state_dict_converts_and_loads(
    cmu_three_stages: dict[str, torch.Tensor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "body_pose_model.pth"
    torch.save(cmu_three_stages, path)
    with caplog.at_level(logging.INFO, logger="model.pose"):
        pose = OpenPoseBody(stages=2, output="parts+pafs", weights=path)
    # Stage 3 is dropped: 2 branches x 7 convs x (weight, bias).
    assert "ignored 28 tensors of stages after 2" in caplog.text
    assert pose.input_convention == "caffe_bgr"
    source = [cmu_three_stages[f"{name}.{kind}"] for name, _ in cmu_layers(2) for kind in ("weight", "bias")]
    params = list(pose.parameters())
    assert len(params) == len(source)
    for param, tensor in zip(params, source, strict=True):
        assert torch.equal(param.detach(), tensor)
    assert torch.equal(conv(pose, "front.conv4_4_cpm").weight.detach(), cmu_three_stages["conv4_4_CPM.weight"])
    assert torch.equal(
        conv(pose, "stages.1.parts.convs.6").bias.detach(),  # type: ignore[union-attr]
        cmu_three_stages["Mconv7_stage2_L2.bias"],
    )
    assert torch.equal(conv(pose, "stages.0.paf.convs.3").weight.detach(), cmu_three_stages["conv5_4_CPM_L1.weight"])


def test_converter_accepts_the_pytorch_port_module_prefixes(
    cmu_three_stages: dict[str, torch.Tensor],
) -> None:
    # The port's module keeps the front in model0 and branch L1/L2 of stage t in model{t}_1 / model{t}_2.
    def port_key(key: str) -> str:
        if "CPM_L" in key:
            return f"model1_{key.split('_L')[1][0]}.{key}"
        if key.startswith("Mconv"):
            return f"model{key.split('_stage')[1][0]}_{key.split('_L')[1][0]}.{key}"
        return f"module.model0.{key}"

    prefixed = {port_key(k): v for k, v in cmu_three_stages.items()}
    assert "model1_2.conv5_5_CPM_L2.weight" in prefixed and "model3_1.Mconv7_stage3_L1.bias" in prefixed
    converted = convert_cmu_body_state_dict(prefixed, stages=3)
    assert torch.equal(converted["front.conv1_1.weight"], cmu_three_stages["conv1_1.weight"])
    assert torch.equal(converted["stages.2.paf.convs.6.bias"], cmu_three_stages["Mconv7_stage3_L1.bias"])


def test_converter_names_missing_and_misshaped_keys(cmu_three_stages: dict[str, torch.Tensor]) -> None:
    missing = dict(cmu_three_stages)
    del missing["Mconv4_stage2_L2.weight"]
    with pytest.raises(ValueError, match=r"missing \['Mconv4_stage2_L2.weight'\]"):
        convert_cmu_body_state_dict(missing, stages=2)
    # Stage 3 is not kept, so its tensors are not needed.
    only_stage3_missing = dict(cmu_three_stages)
    del only_stage3_missing["Mconv4_stage3_L2.weight"]
    assert len(convert_cmu_body_state_dict(only_stage3_missing, stages=2)) == 2 * (12 + 2 * 5 + 2 * 7)
    misshaped = dict(cmu_three_stages)
    misshaped["conv5_5_CPM_L2.weight"] = torch.zeros(18, 512, 1, 1)
    with pytest.raises(ValueError, match=r"conv5_5_CPM_L2.weight: expected \(19, 512, 1, 1\), got \(18, 512, 1, 1\)"):
        convert_cmu_body_state_dict(misshaped, stages=1)
    with pytest.raises(ValueError, match="stages"):
        convert_cmu_body_state_dict(cmu_three_stages, stages=7)


def test_six_stage_weights_cannot_come_from_a_three_stage_file(
    cmu_three_stages: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "body_pose_model.pth"
    torch.save(cmu_three_stages, path)
    with pytest.raises(ValueError, match=r"Mconv1_stage4_L1\.weight"):
        OpenPoseBody(stages=4, weights=path)


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[nn.Conv2d]]:
    """A torchvision VGG-19 state dict on disk and the model's convs in order."""
    torch.manual_seed(1)
    vgg = torchvision.models.vgg19(weights=None)
    # The 400 MB classifier has no counterpart in the pose stream: keep one small tensor of it so the loader
    # still sees (and ignores) classifier keys without writing the rest to disk.
    state = {k: v for k, v in vgg.state_dict().items() if k.startswith("features.") or k == "classifier.6.bias"}
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path, [m for m in vgg.features if isinstance(m, nn.Conv2d)]


def test_torchvision_vgg19_state_dict_initialises_the_front(vgg19_file: tuple[Path, list[nn.Conv2d]]) -> None:
    path, vgg_convs = vgg19_file
    pose = OpenPoseBody(stages=1, weights=path)
    our_convs = [m for m in pose.front.values() if isinstance(m, nn.Conv2d)][:10]
    for ours, theirs in zip(our_convs, vgg_convs[:10], strict=True):
        assert torch.equal(ours.weight.detach(), theirs.weight.detach())
        assert torch.equal(ours.bias.detach(), theirs.bias.detach())  # type: ignore[union-attr]
    assert pose.input_convention == "imagenet_rgb"
    # torchvision VGG normalises RGB with ImageNet mean/std: the stream now does the same.
    x = torch.rand(1, 3, 32, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(pose.to_network_input(x), (x - mean) / std)
    state = torch.load(path, weights_only=True)
    del state["features.21.weight"]
    with pytest.raises(ValueError, match=r"features\.21\.weight: missing"):
        vgg19_front_from_torchvision(state)


def test_own_weights_round_trip_keeps_the_input_convention(
    vgg19_file: tuple[Path, list[nn.Conv2d]], tmp_path: Path
) -> None:
    vgg_path, _ = vgg19_file
    trained = OpenPoseBody(stages=2, weights=vgg_path).eval()
    path = tmp_path / "pose.safetensors"
    save_file(trained.state_dict(), str(path))
    # A model rebuilt without init weights still gets the ImageNet input map from the saved buffers.
    restored = OpenPoseBody(stages=1, weights=path).eval()
    assert restored.input_convention == "imagenet_rgb"
    reference = OpenPoseBody(stages=1).eval()
    wanted = reference.state_dict()
    reference.load_state_dict({k: v for k, v in trained.state_dict().items() if k in wanted})
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), reference(x))


def test_unknown_weight_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"backbone.conv1.weight": torch.zeros(2, 3, 1, 1)}, str(path))
    with pytest.raises(ValueError, match=r"backbone\.conv1\.weight"):
        OpenPoseBody(stages=1, weights=path)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"valid: .*features.*parts.*pafs.*parts\+pafs"):
        OpenPoseBody(output="heatmaps")
    for stages in (0, 7, True):
        with pytest.raises(ValueError, match="stages"):
            OpenPoseBody(stages=stages)
    assert set(OUTPUT_MODES) == {"features", "parts", "pafs", "parts+pafs"}


def test_input_is_converted_to_the_cmu_convention() -> None:
    torch.manual_seed(0)
    pose = OpenPoseBody(stages=2, output="parts+pafs").eval()
    gray = torch.full((1, 3, 32, 16), 0.5)
    with torch.no_grad():
        # OpenPose feeds BGR uint8 v as v/256 - 0.5; our [0, 1] input is v/255.
        torch.testing.assert_close(pose(gray), pose.forward_network(gray.flip(1) * 255 / 256 - 0.5))
        x = torch.rand(2, 3, 32, 16)
        manual = x[:, [2, 1, 0]] * (255 / 256) - 0.5
        torch.testing.assert_close(pose.to_network_input(x), manual)
        torch.testing.assert_close(pose(x), pose.forward_network(manual))
