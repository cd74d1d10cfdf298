"""Re-id losses as nn.Modules, combined with weights from the config.

    criterion = ReIDCriterion(LossConfig(id_weight=1.0, triplet_weight=1.0, layer_weight=0.5))
    terms = criterion(model(images), pids)  # {"loss": total, "id": ..., "triplet": ..., "triplet_layer4": ...}
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from model import ReIDOutput
from training.config import LossConfig

__all__ = ["BatchHardTripletLoss", "LabelSmoothingCrossEntropy", "LossConfig", "ReIDCriterion", "pairwise_euclidean"]

logger = logging.getLogger(__name__)


class LabelSmoothingCrossEntropy(nn.Module):
    """Identity loss with label smoothing (Szegedy et al.): target = (1 - eps) one-hot + eps / C.

    logits (B, C), targets (B,) -> scalar.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.epsilon)


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances, clamped so the gradient stays finite on the diagonal."""
    x = x.float()
    squared = x.pow(2).sum(dim=1, keepdim=True)
    dist = squared + squared.T - 2.0 * x @ x.T
    return dist.clamp_min(1e-12).sqrt()


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017): per anchor the farthest positive and nearest negative.

    features (B, D), pids (B,) -> scalar mean of relu(d(a, p_hard) - d(a, n_hard) + margin); anchors without a
    positive or without a negative in the batch are left out.
    """

    def __init__(self, margin: float = 0.3, normalise: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.normalise = normalise

    def forward(self, features: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            features = F.normalize(features.float(), dim=1)
        dist = pairwise_euclidean(features)
        same = pids.unsqueeze(0) == pids.unsqueeze(1)
        eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
        positive_mask, negative_mask = same & ~eye, ~same
        valid = positive_mask.any(dim=1) & negative_mask.any(dim=1)
        if not valid.any():
            return features.sum() * 0.0  # keeps the graph so backward() works on a degenerate batch
        hardest_positive = dist.masked_fill(~positive_mask, float("-inf")).amax(dim=1)
        hardest_negative = dist.masked_fill(~negative_mask, float("inf")).amin(dim=1)
        losses = F.relu(hardest_positive - hardest_negative + self.margin)
        return losses[valid].mean()


class ReIDCriterion(nn.Module):
    """Identity + batch-hard triplet (+ one triplet per layer-wise head), weighted and summed.

    ReIDOutput, pids (B,) -> {"loss": total (graph), term name: value (graph)}.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.identity = LabelSmoothingCrossEntropy(self.config.label_smoothing)
        self.triplet = BatchHardTripletLoss(self.config.triplet_margin)

    def forward(self, output: ReIDOutput, pids: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        if output.logits is not None and cfg.id_weight > 0:
            terms["id"] = self.identity(output.logits, pids)
        if cfg.triplet_weight > 0:
            terms["triplet"] = self.triplet(output.features, pids)
        if cfg.layer_weight > 0:
            for name, feats in output.layer_features.items():
                terms[f"triplet_{name}"] = self.triplet(feats, pids)
        if not terms:
            raise ValueError("every loss weight is zero (or the model has no classifier): nothing to train")
        weights = {"id": cfg.id_weight, "triplet": cfg.triplet_weight}
        total = sum(weights.get(name, cfg.layer_weight) * value for name, value in terms.items())
        assert isinstance(total, torch.Tensor)
        terms["loss"] = total
        return terms
