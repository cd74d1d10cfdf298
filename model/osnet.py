"""OSNet, the omni-scale re-id network (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification",
ICCV 2019), in the four widths torchreid publishes (x1.0, x0.75, x0.5, x0.25), as baselines beside the ResNet-50
models.

    model = osnet_x0_25(num_classes=751)
    out = model(torch.rand(4, 3, 256, 128))   # features (4, 512), logits (4, 751)
    emb = model.eval().embed(torch.rand(4, 3, 256, 128))   # (4, 512), unit norm

Module and parameter names below ``backbone`` are exactly torchreid's (``conv1.conv.weight``,
``conv2.0.conv2b.1.bn.running_mean``, ``fc.0.weight`` ...), so the official model-zoo weights map onto
``backbone.<name>`` one to one; see model/torchreid_import.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from model.base import DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, ReIDModel

logger = logging.getLogger(__name__)

FEATURE_DIM = 512
# Blocks per stage (conv2, conv3, conv4): the same for every OSNet width.
STAGE_BLOCKS: tuple[int, int, int] = (2, 2, 2)


class ConvLayer(nn.Module):
    """Conv (no bias) + BN + ReLU: the 7x7 stem and the 1x1 convs. (B, C_in, H, W) -> (B, C_out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ConvLinear(nn.Module):
    """1x1 conv + BN without ReLU: the block's expansion and its shortcut, whose sum is activated once.

    (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LiteConv3x3(nn.Module):
    """The paper's Lite 3x3: pointwise 1x1 conv, then depthwise 3x3 conv, then BN + ReLU (none in between).

    (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """The unified aggregation gate: global average pool -> 1x1 conv (C -> C/16) -> ReLU -> 1x1 conv -> sigmoid,
    multiplied channel-wise into its input. (B, C, H, W) -> (B, C, H, W).

    One instance is shared by all streams of a block, which is what makes the fusion dynamic but scale-agnostic.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = x.mean(dim=(2, 3), keepdim=True)
        gates = torch.sigmoid(self.fc2(self.relu(self.fc1(gates))))
        return x * gates


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck: 1x1 reduction to C_out/4, four streams of 1..4 stacked Lite 3x3 convs
    (receptive fields 3, 5, 7, 9), gated and summed, 1x1 expansion, residual add, ReLU.

    (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, bottleneck_reduction: int = 4) -> None:
        super().__init__()
        mid = out_channels // bottleneck_reduction
        self.conv1 = ConvLayer(in_channels, mid)
        self.conv2a = LiteConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(4)))
        self.gate = ChannelGate(mid)
        self.conv3 = ConvLinear(mid, out_channels)
        self.downsample = ConvLinear(in_channels, out_channels) if in_channels != out_channels else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        fused = (
            self.gate(self.conv2a(reduced))
            + self.gate(self.conv2b(reduced))
            + self.gate(self.conv2c(reduced))
            + self.gate(self.conv2d(reduced))
        )
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(self.conv3(fused) + identity)


def _stage(in_channels: int, out_channels: int, blocks: int, reduce_spatial_size: bool) -> nn.Sequential:
    """``blocks`` OSBlocks, then (optionally) a 1x1 conv + 2x2 average pool transition that halves H and W."""
    layers: list[nn.Module] = [OSBlock(in_channels, out_channels)]
    layers += [OSBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    if reduce_spatial_size:
        layers.append(nn.Sequential(ConvLayer(out_channels, out_channels), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNetBackbone(nn.Module):
    """Stem, three omni-scale stages, 1x1 conv5, global average pool and the fc layer (Linear + BN1d + ReLU).

    (B, 3, H, W) normalised -> (B, 512). For 256x128 input the conv5 map is (B, C_4, 16, 8).
    Attribute names are torchreid's, so its state dict keys are this module's keys.
    """

    def __init__(self, channels: Sequence[int], feature_dim: int = FEATURE_DIM, head: bool = True) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"OSNet needs 4 channel widths (stem, conv2, conv3, conv4), got {list(channels)}")
        c0, c1, c2, c3 = (int(c) for c in channels)
        self.out_channels = c3
        self.conv1 = ConvLayer(3, c0, kernel_size=7, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(c0, c1, STAGE_BLOCKS[0], reduce_spatial_size=True)
        self.conv3 = _stage(c1, c2, STAGE_BLOCKS[1], reduce_spatial_size=True)
        self.conv4 = _stage(c2, c3, STAGE_BLOCKS[2], reduce_spatial_size=False)
        self.conv5 = ConvLayer(c3, c3)
        # head=False: a trunk for another pooling (pose-bilinear), without the fc nobody would read or train.
        self.fc: nn.Sequential | None = None
        if head:
            self.fc = nn.Sequential(nn.Linear(c3, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> conv5 output (B, C_4, H/16, W/16)."""
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))

    def stage_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> {"conv2": (B, C_1, H/8, W/8), "conv3": (B, C_2, H/16, W/16), "conv4", "conv5"}."""
        maps: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.conv1(x))
        for name in ("conv2", "conv3", "conv4", "conv5"):
            x = getattr(self, name)(x)
            maps[name] = x
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc is None:
            raise RuntimeError("this OSNet trunk was built without its fc head; use feature_map() or stage_maps()")
        return self.fc(self.feature_map(x).mean(dim=(2, 3)))


class OSNetReID(ReIDModel):
    """OSNet + fc (512) as the embedding, then the neck and identity classifier of ``ReIDModel``.

    (B, 3, H, W) -> features (B, 512): the fc output after its BN and ReLU, i.e. torchreid's test-time feature.
    ``classifier_bias=True`` gives the classifier a bias, as torchreid's has; imported weights need it.
    torchreid's OSNet has no BNNeck (its classifier reads the fc output), so imported models use ``neck="none"``.
    """

    CHANNELS: ClassVar[tuple[int, int, int, int]] = (64, 256, 384, 512)

    def __init__(
        self,
        num_classes: int = 0,
        input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        neck: str = "bnneck",
        classifier_bias: bool = False,
        pretrained: str | Path | None = None,
    ) -> None:
        if not type(self).architecture:
            raise TypeError("OSNetReID is abstract: build one of " + ", ".join(sorted(OSNET_ARCHITECTURES)))
        config: dict[str, Any] = {
            "num_classes": num_classes,
            "input_size": list(input_size),
            "mean": list(mean),
            "std": list(std),
            "neck": neck,
            "classifier_bias": bool(classifier_bias),
        }
        super().__init__(
            config=config,
            embedding_dim=FEATURE_DIM,
            num_classes=num_classes,
            input_size=(int(input_size[0]), int(input_size[1])),
            mean=tuple(mean),  # type: ignore[arg-type]
            std=tuple(std),  # type: ignore[arg-type]
            neck=neck,
        )
        if classifier_bias and self.classifier is not None:
            self.classifier = nn.Linear(self.embedding_dim, self.num_classes, bias=True)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        self.backbone = OSNetBackbone(self.CHANNELS)
        self.init_sources: list[dict[str, Any]] = []
        if pretrained is not None:
            self._load_backbone(pretrained)

    def _load_backbone(self, pretrained: str | Path) -> None:
        """Initialise the backbone (fc included) from a torchreid model-zoo file; its classifier is dropped."""
        from model.appearance import strict_copy
        from model.backbones import load_state_dict_file
        from model.sources import weight_source

        state = {k.removeprefix("module."): v for k, v in load_state_dict_file(pretrained).items()}
        strict_copy(self.backbone, {k: v for k, v in state.items() if not k.startswith("classifier.")}, str(pretrained))
        self.init_sources.append(weight_source(pretrained, "appearance"))
        logger.info("%s backbone from %s (its classifier dropped)", self.architecture, pretrained)

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.backbone(x), {}


class OSNetX1_0ReID(OSNetReID):
    """OSNet at full width: channels (64, 256, 384, 512), about 2.2M parameters without the classifier."""

    architecture = "osnet_x1_0"
    CHANNELS = (64, 256, 384, 512)


class OSNetX0_75ReID(OSNetReID):
    """OSNet at three-quarter width: channels (48, 192, 288, 384), about 1.3M parameters without the classifier."""

    architecture = "osnet_x0_75"
    CHANNELS = (48, 192, 288, 384)


class OSNetX0_5ReID(OSNetReID):
    """OSNet at half width: channels (32, 128, 192, 256), about 0.6M parameters without the classifier."""

    architecture = "osnet_x0_5"
    CHANNELS = (32, 128, 192, 256)


class OSNetX0_25ReID(OSNetReID):
    """OSNet at quarter width: channels (16, 64, 96, 128), about 0.2M parameters without the classifier."""

    architecture = "osnet_x0_25"
    CHANNELS = (16, 64, 96, 128)


def osnet_x1_0(**config: Any) -> OSNetReID:
    """Factory entry for "osnet_x1_0": keyword config as in ``OSNetReID``."""
    return OSNetX1_0ReID(**config)


def osnet_x0_75(**config: Any) -> OSNetReID:
    """Factory entry for "osnet_x0_75": keyword config as in ``OSNetReID``."""
    return OSNetX0_75ReID(**config)


def osnet_x0_5(**config: Any) -> OSNetReID:
    """Factory entry for "osnet_x0_5": keyword config as in ``OSNetReID``."""
    return OSNetX0_5ReID(**config)


def osnet_x0_25(**config: Any) -> OSNetReID:
    """Factory entry for "osnet_x0_25": keyword config as in ``OSNetReID``."""
    return OSNetX0_25ReID(**config)


OSNET_ARCHITECTURES: dict[str, type[OSNetReID]] = {
    OSNetX1_0ReID.architecture: OSNetX1_0ReID,
    OSNetX0_75ReID.architecture: OSNetX0_75ReID,
    OSNetX0_5ReID.architecture: OSNetX0_5ReID,
    OSNetX0_25ReID.architecture: OSNetX0_25ReID,
}
