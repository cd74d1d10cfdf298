"""OSNet x1.0 / x0.75 / x0.5 / x0.25 on random input: shapes, unit-norm embeddings, logits, config, structure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.factory import build_model
from model.osnet import OSBlock, OSNetReID, osnet_x0_5, osnet_x0_25, osnet_x0_75, osnet_x1_0

# torchreid's channel widths (stem, conv2, conv3, conv4) for each width multiplier.
ARCHS = {
    "osnet_x1_0": (osnet_x1_0, (64, 256, 384, 512)),
    "osnet_x0_75": (osnet_x0_75, (48, 192, 288, 384)),
    "osnet_x0_5": (osnet_x0_5, (32, 128, 192, 256)),
    "osnet_x0_25": (osnet_x0_25, (16, 64, 96, 128)),
}
# The forward-pass tests run on the two extreme widths only (the middle ones share every line of code with them;
# their structure is checked below), to keep the suite fast on 2 CPU cores.
FORWARD_ARCHS = ["osnet_x0_25", "osnet_x1_0"]


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    return torch.rand(2, 3, 256, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", FORWARD_ARCHS)
def test_embed_is_finite_unit_norm_512(arch: str, crops: torch.Tensor) -> None:
    constructor, _ = ARCHS[arch]
    torch.manual_seed(0)
    model = constructor().eval()
    emb = model.embed(crops)
    assert emb.shape == (2, 512) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    # Two different crops must not collapse onto one embedding.
    assert not torch.allclose(emb[0], emb[1])
    # uint8 input is the same crop scaled by 255: the model handles the conversion itself.
    as_uint8 = (crops * 255).round().to(torch.uint8)
    torch.testing.assert_close(model.embed(as_uint8), model.embed(as_uint8.float() / 255))


@pytest.mark.parametrize("arch", FORWARD_ARCHS)
def test_forward_gives_logits_and_features(arch: str, crops: torch.Tensor) -> None:
    constructor, _ = ARCHS[arch]
    model = constructor(num_classes=7).train()
    out = model(crops)
    assert out.features.shape == (2, 512)
    assert out.logits is not None and out.logits.shape == (2, 7)
    assert out.layer_features == {}
    out.logits.sum().backward()
    assert model.backbone.conv1.conv.weight.grad is not None
    assert model.classifier is not None and model.classifier.bias is None


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_widths_and_feature_map(arch: str, crops: torch.Tensor) -> None:
    constructor, channels = ARCHS[arch]
    model = constructor().eval()
    state = model.state_dict()
    widths = [
        state[f"backbone.{name}.weight"].shape[0]
        for name in ("conv1.conv", "conv2.0.conv3.conv", "conv3.0.conv3.conv", "conv4.0.conv3.conv")
    ]
    assert widths == list(channels)
    with torch.no_grad():
        fmap = model.backbone.feature_map(model.normalise(crops[:, :, ::4, ::4]))
    # Stem /4, two transitions /2 each: 64x32 -> 4x2 (256x128 -> 16x8).
    assert fmap.shape == (2, channels[3], 4, 2)


def test_osblock_streams_share_one_gate_and_keep_shape() -> None:
    block = OSBlock(16, 64).eval()
    assert [len(block.conv2b), len(block.conv2c), len(block.conv2d)] == [2, 3, 4]
    x = torch.rand(3, 16, 8, 4)
    with torch.no_grad():
        y = block(x)
    assert y.shape == (3, 64, 8, 4)
    assert (y >= 0).all()  # ReLU after the residual sum
    gates = [m for m in block.modules() if type(m).__name__ == "ChannelGate"]
    assert len(gates) == 1


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_config_round_trip_rebuilds_same_state_layout(arch: str) -> None:
    constructor, _ = ARCHS[arch]
    model = constructor(num_classes=5, input_size=(128, 64), neck="none", classifier_bias=True)
    rebuilt = build_model(arch, **model.config)
    assert type(rebuilt) is type(model) and rebuilt.architecture == arch
    assert rebuilt.config == model.config
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert rebuilt.input_size == (128, 64) and rebuilt.embedding_dim == 512
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_classifier_bias_and_neck_options(crops: torch.Tensor) -> None:
    plain = osnet_x0_25(num_classes=3)
    assert "neck.bn.weight" in plain.state_dict()  # default BNNeck, as the ResNet-50 baseline
    biased = osnet_x0_25(num_classes=3, neck="none", classifier_bias=True).eval()
    assert biased.classifier is not None and biased.classifier.bias is not None
    assert not any(k.startswith("neck.") for k in biased.state_dict())
    # With no neck the embedding is the normalised fc output, torchreid's test-time feature.
    with torch.no_grad():
        features = biased(crops).features
    assert (features >= 0).all()  # fc ends in ReLU
    torch.testing.assert_close(biased.embed(crops), F.normalize(features, dim=1))
    # classifier_bias without classes is harmless: there is no classifier.
    assert osnet_x0_25(classifier_bias=True).classifier is None


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="osnet_x0_25"):
        build_model("osnet_x0_25", channels=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="neck"):
        osnet_x0_25(neck="bn")
    with pytest.raises(TypeError, match="abstract"):
        OSNetReID()


@pytest.mark.parametrize(("arch", "millions"), [("osnet_x1_0", 2.2), ("osnet_x0_75", 1.3), ("osnet_x0_5", 0.6),
                                               ("osnet_x0_25", 0.2)])
def test_parameter_counts_match_the_published_ones(arch: str, millions: float) -> None:
    # The paper and torchreid's model-zoo table: parameters in millions, one decimal, without the classifier.
    constructor, _ = ARCHS[arch]
    count = sum(p.numel() for p in constructor().backbone.parameters())
    assert round(count / 1e6, 1) == millions
