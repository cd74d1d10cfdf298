"""The explicit architecture factory: a name -> constructor table, no registry decorators.

    model = build_model("pose_bilinear", num_classes=751, embedding_dim=1024, layer_wise=["layer3", "layer4"])
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from model.base import ReIDModel
from model.network import PoseBilinearReID, ResNet50ReID
from model.osnet import osnet_x0_5, osnet_x0_25, osnet_x0_75, osnet_x1_0

logger = logging.getLogger(__name__)

ARCHITECTURES: dict[str, Callable[..., ReIDModel]] = {
    "pose_bilinear": PoseBilinearReID,
    "resnet50": ResNet50ReID,
    "osnet_x1_0": osnet_x1_0,
    "osnet_x0_75": osnet_x0_75,
    "osnet_x0_5": osnet_x0_5,
    "osnet_x0_25": osnet_x0_25,
}


def build_model(name: str, **config: Any) -> ReIDModel:
    """Build architecture ``name`` with its keyword config; an unknown name lists the valid ones."""
    try:
        constructor = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(sorted(ARCHITECTURES))}") from None
    try:
        return constructor(**config)
    except TypeError as exc:
        # Unknown keys surface as TypeError from the constructor; say which architecture rejected them.
        raise ValueError(f"bad config for {name!r}: {exc}") from exc
