"""Appearance trunks the pose-bilinear model can use, each returning its stage maps by name.

    trunk = build_appearance("osnet_x0_25", pretrained="osnet_x0_25_msmt17.pth")
    maps = trunk(torch.randn(2, 3, 256, 128))     # {"conv2": ..., "conv5": (2, 128, 16, 8)}
    trunk.final, trunk.layer_channels["conv5"]     # "conv5", 128

resnet50 (the method's, torchvision, last stride 1, optional ImageNet init), osnet_x0_25 (torchreid's OSNet
without its fc head, initialised from a torchreid model-zoo file) and mobilenet_v2 (torchvision's feature
extractor, initialised from an ImageNet file with torchvision's early key names). Every weight file is read with
weights_only and must fit exactly (the dropped heads are named and logged).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from model.backbones import RESNET50_LAYER_CHANNELS, ResNet50Backbone, load_state_dict_file
from model.osnet import OSNetBackbone, OSNetX0_25ReID
from model.sources import named_source, weight_source

logger = logging.getLogger(__name__)

APPEARANCE_NAMES: tuple[str, ...] = ("resnet50", "osnet_x0_25", "mobilenet_v2")
# Heads of the source files that the trunks do not have: dropped on load, and said so.
_OSNET_DROPPED = re.compile(r"^(fc|classifier)\.")
_MOBILENET_STAGES: tuple[tuple[str, int, int], ...] = (
    # (name, last feature index of the stage, channels)
    ("block3", 3, 24),
    ("block6", 6, 32),
    ("block13", 13, 96),
    ("block18", 18, 1280),
)


def strict_copy(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``: same key set (BatchNorm step counters may be absent) and shapes."""
    ours = module.state_dict()
    counters = {k for k in ours if k.endswith("num_batches_tracked")}
    missing = sorted(set(ours) - set(state) - counters)
    unexpected = sorted(set(state) - set(ours))
    shapes = [k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not fit: missing {missing[:4]} ({len(missing)}), unexpected {unexpected[:4]} "
            f"({len(unexpected)}), mis-shaped {sorted(shapes)[:4]} ({len(shapes)})"
        )
    module.load_state_dict({**{k: ours[k] for k in counters}, **state}, strict=True)


class ResNet50Trunk(ResNet50Backbone):
    """The method's appearance stream: (B, 3, H, W) -> {"layer1": ..., "layer4": (B, 2048, H/16, W/16)}."""

    final = "layer4"
    layer_channels: dict[str, int] = dict(RESNET50_LAYER_CHANNELS)

    def __init__(self, last_stride: int = 1, pretrained: str | Path | None = None) -> None:
        super().__init__(last_stride=last_stride, pretrained=pretrained)
        self.sources: list[dict[str, Any]] = []
        if pretrained is not None:
            self.sources.append(
                named_source("torchvision ResNet50_Weights.IMAGENET1K_V1", "appearance", "BSD-3-Clause (torchvision)")
                if str(pretrained) == "imagenet"
                else weight_source(pretrained, "appearance")
            )


class OSNetTrunk(OSNetBackbone):
    """OSNet-x0.25 without its fc head: (B, 3, H, W) -> {"conv2", "conv3", "conv4", "conv5": (B, 128, H/16, W/16)}.

    pretrained: a torchreid model-zoo file (osnet_x0_25_msmt17.pth / _market1501.pth); its fc and classifier are
    dropped, every other tensor must fit.
    """

    final = "conv5"

    def __init__(self, pretrained: str | Path | None = None) -> None:
        channels = OSNetX0_25ReID.CHANNELS
        super().__init__(channels, head=False)
        self.layer_channels = {"conv2": channels[1], "conv3": channels[2], "conv4": channels[3], "conv5": channels[3]}
        self.sources: list[dict[str, Any]] = []
        if pretrained is not None:
            state = {k.removeprefix("module."): v for k, v in load_state_dict_file(pretrained).items()}
            dropped = sorted(k for k in state if _OSNET_DROPPED.match(k))
            strict_copy(self, {k: v for k, v in state.items() if k not in dropped}, str(pretrained))
            logger.info("OSNet-x0.25 trunk from %s (dropped its head: %d tensors)", pretrained, len(dropped))
            self.sources.append(weight_source(pretrained, "appearance"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("OSNetTrunk returns stage maps: call maps(x)")

    def maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.stage_maps(x)


_MOBILENET_NO_EXPAND = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}
_MOBILENET_EXPAND = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}


def mobilenet_v2_key(old: str) -> str:
    """torchvision's early MobileNetV2 key (flat ``features.N.conv.J``) -> today's nested name."""
    match = re.match(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$", old)
    if match is None:
        return old
    block, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
    # Block 1 has no expansion conv: (depthwise, BN, [ReLU], project, BN); the others start with an expansion.
    table = _MOBILENET_NO_EXPAND if block == 1 else _MOBILENET_EXPAND
    if index not in table:
        raise ValueError(f"unexpected MobileNetV2 key {old!r}")
    return f"features.{block}.conv.{table[index]}.{rest}"


class MobileNetV2Trunk(nn.Module):
    """torchvision MobileNetV2 features, maps named by their last block: (B, 3, H, W) -> {"block3": /4,
    "block6": /8, "block13": /16, "block18": (B, 1280, H/32, W/32)}."""

    final = "block18"

    def __init__(self, pretrained: str | Path | None = None) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(weights=None).features
        self.layer_channels = {name: channels for name, _, channels in _MOBILENET_STAGES}
        self.sources: list[dict[str, Any]] = []
        if pretrained is not None:
            state = load_state_dict_file(pretrained)
            renamed = {mobilenet_v2_key(k): v for k, v in state.items() if k.startswith("features.")}
            dropped = len(state) - len(renamed)
            strict_copy(self, renamed, str(pretrained))
            logger.info("MobileNetV2 trunk from %s (%d non-feature tensors dropped)", pretrained, dropped)
            self.sources.append(weight_source(pretrained, "appearance"))

    def maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps: dict[str, torch.Tensor] = {}
        start = 0
        for name, last, _ in _MOBILENET_STAGES:
            for index in range(start, last + 1):
                x = self.features[index](x)
            maps[name] = x
            start = last + 1
        return maps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.maps(x)


def build_appearance(name: str, last_stride: int | None, pretrained: str | Path | None) -> nn.Module:
    """The appearance trunk ``name``; ``last_stride`` only applies to resnet50 (None there means 1)."""
    if name not in APPEARANCE_NAMES:
        raise ValueError(f"unknown appearance backbone {name!r}; valid: {list(APPEARANCE_NAMES)}")
    if name == "resnet50":
        return ResNet50Trunk(last_stride=1 if last_stride is None else last_stride, pretrained=pretrained)
    if last_stride is not None:
        raise ValueError(f"last_stride applies to the resnet50 appearance backbone only, not {name!r}")
    return OSNetTrunk(pretrained) if name == "osnet_x0_25" else MobileNetV2Trunk(pretrained)


def appearance_maps(trunk: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stage maps of any trunk built by ``build_appearance``."""
    if isinstance(trunk, OSNetTrunk | MobileNetV2Trunk):
        return trunk.maps(x)
    result: dict[str, torch.Tensor] = trunk(x)
    return result
