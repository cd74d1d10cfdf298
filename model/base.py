"""The contract every re-id network in this package follows.

A model receives RGB crops scaled to [0, 1] (float) or raw uint8, normalises them with its own mean/std buffers
(so training and serving cannot diverge), and returns either a training ``ReIDOutput`` (``forward``) or an
L2-normalised embedding (``embed``)::

    model = build_model("resnet50", num_classes=751)
    out = model(torch.rand(8, 3, 256, 128))    # ReIDOutput(features (8, 2048), logits (8, 751), layer_features {})
    emb = model.eval().embed(torch.rand(8, 3, 256, 128))   # (8, 2048), unit norm
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from model.spec import DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, Preprocess

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_INPUT_SIZE", "IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "ReIDModel", "ReIDOutput"]


@dataclass
class ReIDOutput:
    """What a training forward pass returns.

    features: (B, D) embedding before the BNNeck; the triplet loss works on it.
    logits: (B, num_classes) identity logits after the BNNeck, or None when the model has no classifier.
    layer_features: name -> (B, D_l) embeddings of the layer-wise similarity heads (empty when switched off).
    """

    features: torch.Tensor
    logits: torch.Tensor | None
    layer_features: dict[str, torch.Tensor] = field(default_factory=dict)


class BNNeck(nn.Module):
    """Batch norm between the metric-learning features and the classifier, bias frozen at zero (Luo et al. 2019).

    (B, D) -> (B, D).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class ReIDModel(nn.Module):
    """Base of every architecture: input normalisation, neck, classifier, ``forward`` and ``embed``.

    Subclasses implement ``extract(x)`` mapping normalised input (B, 3, H, W) to
    ``(features (B, D), layer_features {name: (B, D_l)})``; ``raw_input`` subclasses get [0, 1] input instead
    (for streams with their own input convention) and call ``self.normalise`` themselves.
    """

    architecture: ClassVar[str] = ""
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    # Constructor arguments that only say how to initialise weights: they are not part of the saved config,
    # so rebuilding a model from a checkpoint never downloads or reads a weight file.
    INIT_ONLY_KEYS: ClassVar[frozenset[str]] = frozenset({"pretrained", "pose_weights"})

    def __init__(
        self,
        *,
        config: dict[str, Any],
        embedding_dim: int,
        num_classes: int = 0,
        input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        neck: str = "bnneck",
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if neck not in ("bnneck", "none"):
            raise ValueError(f"neck must be 'bnneck' or 'none', got {neck!r}")
        if len(input_size) != 2 or min(input_size) < 16:
            raise ValueError(f"input_size must be (height, width) with both >= 16, got {input_size}")
        self.config = {k: v for k, v in config.items() if k not in self.INIT_ONLY_KEYS}
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.neck: nn.Module = BNNeck(self.embedding_dim) if neck == "bnneck" else nn.Identity()
        self.classifier: nn.Linear | None = None
        if self.num_classes > 0:
            self.classifier = nn.Linear(self.embedding_dim, self.num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)

    @property
    def preprocess(self) -> Preprocess:
        mean = tuple(float(v) for v in self.pixel_mean.flatten())
        std = tuple(float(v) for v in self.pixel_std.flatten())
        return Preprocess(self.input_size[0], self.input_size[1], mean, std)  # type: ignore[arg-type]

    def to_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float in [0, 1]; float input is passed through unchanged."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images shaped (B, 3, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        return x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] (B, 3, H, W) -> (x - mean) / std, in the dtype of the input."""
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    raw_input: ClassVar[bool] = False

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, 3, H, W) -> (features (B, D), layer features {name: (B, D_l)})."""
        raise NotImplementedError

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.to_unit_range(x)
        return self.extract(x if self.raw_input else self.normalise(x))

    def forward(self, x: torch.Tensor) -> ReIDOutput:
        """(B, 3, H, W) in [0, 1] -> ReIDOutput (features (B, D), logits (B, C) or None, layer features)."""
        features, layer_features = self._features(x)
        logits = self.classifier(self.neck(features)) if self.classifier is not None else None
        return ReIDOutput(features=features, logits=logits, layer_features=layer_features)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] or uint8 -> (B, D) float32, L2-normalised, after the neck."""
        features, _ = self._features(x)
        return F.normalize(self.neck(features).float(), dim=1)
