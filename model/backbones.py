"""ResNet-50 appearance backbone with last stride 1, ImageNet initialisation, and layer-wise similarity heads.

    backbone = ResNet50Backbone(last_stride=1)
    maps = backbone(torch.randn(2, 3, 256, 128))   # {"layer1": (2, 256, 64, 32), ..., "layer4": (2, 2048, 16, 8)}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

logger = logging.getLogger(__name__)

RESNET50_LAYER_CHANNELS: dict[str, int] = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict from .safetensors or a torch file, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def imagenet_resnet50_state_dict(pretrained: str | Path) -> dict[str, torch.Tensor]:
    """ImageNet ResNet-50 weights: ``"imagenet"`` uses torchvision's weight enum (downloads once where online);
    a path loads a local torchvision-format state dict."""
    if str(pretrained) == "imagenet":
        weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
        return weights.get_state_dict(progress=True)
    return load_state_dict_file(pretrained)


class ResNet50Backbone(nn.Module):
    """torchvision ResNet-50 trunk without pooling/fc; returns every stage's map.

    (B, 3, H, W) normalised -> {"layer1": (B, 256, H/4, W/4), ..., "layer4": (B, 2048, H/s, W/s)} with s = 16
    when last_stride == 1 (the usual re-id choice: a 16x8 map at 256x128) and 32 otherwise.
    """

    def __init__(self, last_stride: int = 1, pretrained: str | Path | None = None) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        net = torchvision.models.resnet50(weights=None)
        if pretrained is not None:
            state = imagenet_resnet50_state_dict(pretrained)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(f"ImageNet ResNet-50 weights do not fit: missing {missing}, unexpected {unexpected}")
            logger.info("ResNet-50 initialised from %s", pretrained)
        if last_stride == 1:
            block = net.layer4[0]
            block.conv2.stride = (1, 1)
            assert block.downsample is not None
            block.downsample[0].stride = (1, 1)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = RESNET50_LAYER_CHANNELS["layer4"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps: dict[str, torch.Tensor] = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            maps[name] = x
        return maps


class LayerWiseHeads(nn.Module):
    """Layer-wise similarity heads: global average pool + FC (+ BN) on chosen backbone stages (``channels``).

    {name: (B, C_l, h_l, w_l)} -> {name: (B, dim)}; a triplet term is applied to each output during training.
    """

    def __init__(
        self, layers: Iterable[str], dim: int = 256, channels: Mapping[str, int] = RESNET50_LAYER_CHANNELS
    ) -> None:
        super().__init__()
        layers = tuple(layers)
        unknown = [name for name in layers if name not in channels]
        if unknown:
            raise ValueError(f"unknown layer-wise layers {unknown}; valid: {sorted(channels)}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer-wise layers repeat: {layers}")
        self.layers = layers
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Linear(channels[name], dim), nn.BatchNorm1d(dim))
                for name in layers
            }
        )

    def forward(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.heads[name](maps[name].mean(dim=(2, 3))) for name in self.layers}
