"""EfficientPose RT / I: our module reproduces the original networks' outputs (reference.npz in ../shared/data).

The reference maps are float16, so the bound is 2e-3 on maps whose peaks are about 0.1-0.6. Without
../shared/data these tests skip; the padding and upsampling rules are checked on their own below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.efficientpose import (
    NUM_JOINTS,
    EfficientPose,
    bilinear_upsampling_kernel,
    output_channels,
    same_padding,
)
from tests.conftest import shared_file

TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(shared_file("efficientpose/reference.npz")) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("variant", ["rt", "i"])
@pytest.mark.parametrize("shape", ["", "_crop"], ids=["square", "crop"])
def test_matches_the_original_network(variant: str, shape: str, reference: dict[str, np.ndarray]) -> None:
    model = EfficientPose(variant, weights=shared_file(f"efficientpose/efficientpose_{variant}.pth")).eval()
    x = torch.from_numpy(reference[f"{variant.upper()}_input{shape}"])
    expected = reference[f"{variant.upper()}_heatmaps{shape}"].astype(np.float32)
    with torch.no_grad():
        heatmaps = model.forward_normalised(x).numpy()
    assert heatmaps.shape == expected.shape
    assert float(np.abs(heatmaps - expected).max()) <= TOLERANCE
    # The maps carry signal: a network that output zeros would pass the bound on weak maps.
    assert float(np.abs(expected).max()) > 20 * TOLERANCE


def test_unit_range_input_equals_normalised_input(reference: dict[str, np.ndarray]) -> None:
    """forward() takes [0, 1] RGB and applies ImageNet normalisation itself."""
    model = EfficientPose("rt", weights=shared_file("efficientpose/efficientpose_rt.pth")).eval()
    normalised = torch.from_numpy(reference["RT_input_crop"])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(normalised * std + mean), model.forward_normalised(normalised))


def test_wrong_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="not EfficientPose-I weights"):
        EfficientPose("i", weights=shared_file("efficientpose/efficientpose_rt.pth"))


def test_own_state_dict_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    from safetensors.torch import save_file

    source = EfficientPose("rt").eval()
    path = Path(str(tmp_path)) / "pose.safetensors"
    save_file(source.state_dict(), str(path))
    copy = EfficientPose("rt", weights=path).eval()
    x = torch.rand(1, 3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), source(x))


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(224, 3, 2, (0, 1)), (56, 5, 2, (1, 2)), (28, 5, 1, (2, 2)), (7, 3, 2, (1, 1)), (112, 3, 1, (1, 1))],
)
def test_same_padding_follows_tensorflow(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == expected


def test_upsampling_is_bilinear_and_keeps_constant_maps() -> None:
    kernel = bilinear_upsampling_kernel(4)
    assert torch.allclose(kernel[1:3, 1:3], torch.full((2, 2), 0.5625))
    model = EfficientPose("rt").eval()
    constant = torch.full((1, NUM_JOINTS, 4, 4), 2.0)
    up = model.upsample(constant)
    assert up.shape == (1, NUM_JOINTS, 32, 32)
    # Away from the border, a bilinear upsampling of a constant is that constant.
    torch.testing.assert_close(up[..., 8:24, 8:24], torch.full((1, NUM_JOINTS, 16, 16), 2.0))


@pytest.mark.parametrize("variant", ["rt", "i"])
@pytest.mark.parametrize("output", ["parts", "confidences", "features"])
def test_output_shapes(variant: str, output: str) -> None:
    model = EfficientPose(variant, output=output).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 3, 32, 16))
    stride = 1 if output == "parts" else 8
    assert y.shape == (2, output_channels(variant, output), 32 // stride, 16 // stride)
    assert model.out_channels == y.shape[1]
    assert torch.isfinite(y).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="valid"):
        EfficientPose("ii")
    with pytest.raises(ValueError, match="valid"):
        EfficientPose("rt", output="pafs")
    with pytest.raises(ValueError, match="divisible by 8"):
        EfficientPose("rt")(torch.rand(1, 3, 30, 16))
