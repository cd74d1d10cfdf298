"""Threshold calibration on constructed top-1 scores with a known best cut, and top-1 extraction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from training.calibration.threshold import Calibration, calibrate_threshold, top1_from_embeddings


def _metrics_at(threshold: float, scores, correct, has_match) -> tuple[float, float, float, float]:
    """Precision, recall, F1, accuracy of the rule 'accept when score >= threshold', computed directly."""
    accepted = scores >= threshold
    good = accepted & correct & has_match
    n_acc, n_good, n_pos = accepted.sum(), good.sum(), has_match.sum()
    precision = n_good / n_acc if n_acc else 0.0
    recall = n_good / n_pos if n_pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = (n_good + (~accepted & ~has_match).sum()) / len(scores)
    return precision, recall, f1, accuracy


def test_known_best_cut_is_the_midpoint() -> None:
    # Four correct matches above every distractor; one query has a match but a wrong top-1 (score 0.55).
    scores = np.array([0.9, 0.85, 0.8, 0.75, 0.6, 0.55, 0.5, 0.4])
    has_match = np.array([1, 1, 1, 1, 0, 1, 0, 0], dtype=bool)
    correct = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    calib = calibrate_threshold(scores, correct, has_match)
    assert calib.threshold == pytest.approx((0.75 + 0.6) / 2)
    assert calib.precision == pytest.approx(1.0)
    assert calib.recall == pytest.approx(4 / 5)
    assert calib.f1 == pytest.approx(2 * 0.8 / 1.8)
    assert calib.accuracy == pytest.approx(7 / 8)
    assert calib.num_queries == 8


def test_equal_f1_prefers_the_higher_threshold() -> None:
    # Accepting the top 2 (2 correct of 4 with a match) and the top 5 (3 correct) both give F1 = 2/3.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.3])
    correct = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    has_match = np.array([1, 1, 0, 0, 1, 1], dtype=bool)
    calib = calibrate_threshold(scores, correct, has_match)
    assert calib.f1 == pytest.approx(2 / 3)
    assert calib.threshold == pytest.approx(0.75)


def test_tied_scores_are_cut_only_between_distinct_values() -> None:
    # The two 0.7 scores (one correct, one distractor) are accepted or rejected together.
    scores = np.array([0.9, 0.7, 0.7, 0.2])
    correct = np.array([1, 1, 0, 0], dtype=bool)
    has_match = np.array([1, 1, 0, 1], dtype=bool)
    calib = calibrate_threshold(scores, correct, has_match)
    p, r, f1, acc = _metrics_at(calib.threshold, scores, correct, has_match)
    assert (calib.precision, calib.recall, calib.f1, calib.accuracy) == pytest.approx((p, r, f1, acc))
    assert calib.threshold == pytest.approx(0.45)  # accepts 0.9, 0.7, 0.7: F1 = 2*2/(3+3)


def test_no_correct_match_rejects_everything() -> None:
    scores = np.array([0.8, 0.5, 0.3])
    calib = calibrate_threshold(scores, np.zeros(3, dtype=bool), np.array([0, 1, 0], dtype=bool))
    assert calib.threshold > scores.max()
    assert calib.f1 == 0.0
    assert calib.accuracy == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_chosen_threshold_is_optimal_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    has_match = rng.random(n) < 0.7
    correct = has_match & (rng.random(n) < 0.8)
    # Correct matches score higher on average, with overlap; rounding creates ties.
    scores = np.round(np.where(correct, rng.normal(0.7, 0.12, n), rng.normal(0.45, 0.12, n)), 2)
    calib = calibrate_threshold(scores, correct, has_match)
    p, r, f1, acc = _metrics_at(calib.threshold, scores, correct, has_match)
    assert (calib.precision, calib.recall, calib.f1, calib.accuracy) == pytest.approx((p, r, f1, acc))
    grid = np.concatenate([np.unique(scores), np.linspace(-1, 1.1, 500)])
    best = max(_metrics_at(t, scores, correct, has_match)[2] for t in grid)
    assert calib.f1 == pytest.approx(best)


def test_calibration_is_frozen_and_serialisable() -> None:
    calib = calibrate_threshold(np.array([0.9, 0.1]), np.array([True, False]), np.array([True, False]))
    assert set(calib.as_dict()) == {"threshold", "precision", "recall", "f1", "accuracy", "num_queries"}
    assert isinstance(calib, Calibration)
    with pytest.raises(dataclasses.FrozenInstanceError):
        calib.threshold = 0.0  # type: ignore[misc]


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError):
        calibrate_threshold(np.array([]), np.array([], dtype=bool), np.array([], dtype=bool))
    with pytest.raises(ValueError):
        calibrate_threshold(np.array([0.1, 0.2]), np.array([True]), np.array([True, True]))
    with pytest.raises(ValueError):
        calibrate_threshold(np.array([np.nan]), np.array([True]), np.array([True]))


def test_top1_from_embeddings_matches_loops() -> None:
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(12, 8)) * 3.0, rng.normal(size=(20, 8))
    q_pids, g_pids = rng.integers(0, 15, 12), rng.integers(0, 10, 20)
    scores, correct, has_match = top1_from_embeddings(q, q_pids, g, g_pids)
    for i in range(12):
        sims = [q[i] @ g[j] / (np.linalg.norm(q[i]) * np.linalg.norm(g[j])) for j in range(20)]
        j = int(np.argmax(sims))
        assert scores[i] == pytest.approx(sims[j])
        assert correct[i] == (g_pids[j] == q_pids[i])
        assert has_match[i] == (q_pids[i] in set(g_pids.tolist()))
    assert not has_match.all(), "the seeded problem should contain distractor queries"


def test_top1_from_embeddings_respects_groups() -> None:
    # Query (pid 1, action a) is identical to a gallery crop of pid 1 in action b: that one must be ignored.
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    scores, correct, has_match = top1_from_embeddings(
        q, np.array([1]), g, np.array([1, 2, 1]), q_groups=["a"], g_groups=["b", "a", "a"]
    )
    assert scores[0] == pytest.approx(0.6)
    assert not correct[0]
    assert has_match[0]
    _, _, has_match_other = top1_from_embeddings(
        q, np.array([1]), g, np.array([1, 2, 3]), q_groups=["a"], g_groups=["b", "a", "a"]
    )
    assert not has_match_other[0]
