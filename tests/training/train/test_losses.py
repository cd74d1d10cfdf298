"""Losses against hand-written references: batch-hard triplet vs a naive loop, label smoothing vs its formula."""

from __future__ import annotations

import math

import pytest
import torch

from model import ReIDOutput
from training.train.losses import (
    BatchHardTripletLoss,
    LabelSmoothingCrossEntropy,
    LossConfig,
    ReIDCriterion,
    pairwise_euclidean,
)


def naive_batch_hard(features: torch.Tensor, pids: torch.Tensor, margin: float) -> torch.Tensor:
    """Reference: loop over anchors, farthest positive and nearest negative by explicit distances."""
    losses = []
    n = len(pids)
    for a in range(n):
        pos = [torch.dist(features[a], features[p]) for p in range(n) if p != a and pids[p] == pids[a]]
        neg = [torch.dist(features[a], features[q]) for q in range(n) if pids[q] != pids[a]]
        if not pos or not neg:
            continue
        losses.append(torch.relu(max(pos) - min(neg) + margin))
    return torch.stack(losses).mean()


def test_pairwise_euclidean_matches_cdist_off_the_diagonal() -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got, expected = pairwise_euclidean(x).double(), torch.cdist(x, x)
    off = ~torch.eye(7, dtype=torch.bool)
    torch.testing.assert_close(got[off], expected[off], atol=1e-4, rtol=1e-5)
    # The diagonal is only near zero (float32 cancellation under the square root); the losses never use it.
    assert float(got.diagonal().max()) < 1e-2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_triplet_matches_naive_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(12, 6, generator=gen)
    # Uneven identities, including one with a single sample (an anchor without a positive is left out).
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])
    for margin in (0.3, 5.0):
        expected = naive_batch_hard(features, pids, margin)
        got = BatchHardTripletLoss(margin)(features, pids)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_batch_hard_triplet_normalise_option_uses_unit_vectors() -> None:
    features = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    scaled = features * torch.linspace(0.5, 10.0, 8).unsqueeze(1)  # per-row scale must not matter
    loss = BatchHardTripletLoss(0.3, normalise=True)
    torch.testing.assert_close(loss(scaled, pids), naive_batch_hard(torch.nn.functional.normalize(features), pids, 0.3))


def test_batch_hard_triplet_is_zero_when_identities_are_separated_by_more_than_the_margin() -> None:
    pids = torch.tensor([0, 0, 1, 1])
    features = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    assert float(BatchHardTripletLoss(0.3)(features, pids)) == 0.0
    # Swap one sample of each identity: every anchor's hardest positive is now farther than its negative.
    assert float(BatchHardTripletLoss(0.3)(features, torch.tensor([0, 1, 0, 1]))) > 9.0


@pytest.mark.parametrize("pids", [[3, 3, 3, 3], [0, 1, 2, 3], [5]])
def test_batch_hard_triplet_degenerate_batches_give_zero_with_a_graph(pids: list[int]) -> None:
    """One identity only (no negatives) or all distinct (no positives): zero loss, backward still works."""
    features = torch.randn(len(pids), 3, requires_grad=True)
    loss = BatchHardTripletLoss()(features, torch.tensor(pids))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert features.grad is not None and torch.count_nonzero(features.grad) == 0


def test_batch_hard_triplet_gradient_is_finite_with_duplicate_features() -> None:
    """Identical rows give zero distances, where sqrt's gradient would be infinite without the clamp."""
    base = torch.randn(1, 4)
    features = torch.cat([base, base, base + 1.0, base + 1.0]).requires_grad_(True)
    BatchHardTripletLoss()(features, torch.tensor([0, 0, 1, 1])).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_label_smoothing_matches_manual_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=gen)
    targets = torch.tensor([0, 3, 6, 2, 2])
    eps = 0.1
    log_p = torch.log_softmax(logits, dim=1)
    target_dist = torch.full_like(log_p, eps / 7)
    target_dist[torch.arange(5), targets] += 1.0 - eps
    expected = -(target_dist * log_p).sum(dim=1).mean()
    torch.testing.assert_close(LabelSmoothingCrossEntropy(eps)(logits, targets), expected)
    # eps = 0 is plain cross-entropy: -log p(target).
    plain = -log_p[torch.arange(5), targets].mean()
    torch.testing.assert_close(LabelSmoothingCrossEntropy(0.0)(logits, targets), plain)


def test_label_smoothing_lower_bound_is_the_smoothed_entropy() -> None:
    """Confident correct logits do not drive the smoothed loss to zero: it bottoms out near H(target)."""
    logits = torch.full((2, 4), -30.0)
    logits[:, 1] = 30.0
    smoothed = float(LabelSmoothingCrossEntropy(0.2)(logits, torch.tensor([1, 1])))
    assert smoothed > 0.2 * 3 / 4 * 59.0  # the 3 wrong classes hold 0.2 * 3/4 of the target mass at log p ~ -60
    assert float(LabelSmoothingCrossEntropy(0.0)(logits, torch.tensor([1, 1]))) < 1e-6


@pytest.mark.parametrize("eps", [-0.1, 1.0])
def test_label_smoothing_rejects_bad_epsilon(eps: float) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        LabelSmoothingCrossEntropy(eps)


def _output(with_layers: bool = True, with_logits: bool = True) -> tuple[ReIDOutput, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    layers = {"layer3": torch.randn(6, 8, generator=gen), "layer4": torch.randn(6, 4, generator=gen)}
    return (
        ReIDOutput(
            features=torch.randn(6, 16, generator=gen),
            logits=torch.randn(6, 3, generator=gen) if with_logits else None,
            layer_features=layers if with_layers else {},
        ),
        pids,
    )


def test_criterion_sums_every_term_with_its_weight() -> None:
    output, pids = _output()
    config = LossConfig(id_weight=0.7, triplet_weight=1.3, triplet_margin=0.4, label_smoothing=0.05, layer_weight=0.25)
    terms = ReIDCriterion(config)(output, pids)
    assert set(terms) == {"loss", "id", "triplet", "triplet_layer3", "triplet_layer4"}
    assert output.logits is not None
    torch.testing.assert_close(terms["id"], LabelSmoothingCrossEntropy(0.05)(output.logits, pids))
    triplet = BatchHardTripletLoss(0.4)
    torch.testing.assert_close(terms["triplet"], triplet(output.features, pids))
    for name, feats in output.layer_features.items():
        torch.testing.assert_close(terms[f"triplet_{name}"], triplet(feats, pids))
        assert float(terms[f"triplet_{name}"]) > 0.0  # random features: the term is really there
    expected = 0.7 * terms["id"] + 1.3 * terms["triplet"] + 0.25 * (terms["triplet_layer3"] + terms["triplet_layer4"])
    torch.testing.assert_close(terms["loss"], expected)


def test_criterion_leaves_out_zero_weighted_terms_and_missing_classifier() -> None:
    output, pids = _output(with_logits=False)
    terms = ReIDCriterion(LossConfig(layer_weight=0.0))(output, pids)
    assert set(terms) == {"loss", "triplet"}
    torch.testing.assert_close(terms["loss"], terms["triplet"])


def test_criterion_with_nothing_to_train_raises() -> None:
    output, pids = _output(with_layers=False, with_logits=False)
    with pytest.raises(ValueError, match="nothing to train"):
        ReIDCriterion(LossConfig(triplet_weight=0.0))(output, pids)


def test_criterion_backward_reaches_features_logits_and_layers() -> None:
    output, pids = _output()
    output.features.requires_grad_(True)
    assert output.logits is not None
    output.logits.requires_grad_(True)
    for feats in output.layer_features.values():
        feats.requires_grad_(True)
    ReIDCriterion()(output, pids)["loss"].backward()
    tensors = [output.features, output.logits, *output.layer_features.values()]
    assert all(t.grad is not None and math.isfinite(float(t.grad.abs().sum())) for t in tensors)
    assert all(float(t.grad.abs().sum()) > 0 for t in tensors if t.grad is not None)
