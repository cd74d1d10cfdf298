"""Per-query Market scores and identity-bootstrap intervals (training/evaluation/bootstrap.py)."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.bootstrap import bootstrap_interval, market_per_query, paired_difference
from training.evaluation.metrics import evaluate_market


def _problem(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    q_pids = np.repeat(np.arange(10), 2)
    q_cams = np.tile([0, 1], 10)
    g_pids = np.repeat(np.arange(12), 4)
    g_cams = np.tile([0, 1, 2, 3], 12)
    distmat = rng.random((q_pids.size, g_pids.size))
    distmat[q_pids[:, None] == g_pids[None, :]] -= 0.3  # some signal, not perfect
    return distmat, q_pids, g_pids, q_cams, g_cams


def test_per_query_scores_average_to_the_market_metrics() -> None:
    distmat, q_pids, g_pids, q_cams, g_cams = _problem()
    ap, rank1, kept = market_per_query(distmat, q_pids, g_pids, q_cams, g_cams)
    reference = evaluate_market(distmat, q_pids, g_pids, q_cams, g_cams)
    assert kept.all() and ap.shape == rank1.shape == (20,)
    assert ap.mean() == pytest.approx(reference["mAP"], abs=1e-12)
    assert rank1.mean() == pytest.approx(reference["rank1"], abs=1e-12)


def test_same_camera_matches_are_removed() -> None:
    # The only gallery crop of the query's person is from the query's camera: nothing left to find.
    distmat = np.array([[0.1, 0.5]])
    ap, rank1, kept = market_per_query(distmat, np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 1]))
    assert not kept.any() and ap.size == 0 and rank1.size == 0


def test_interval_brackets_the_mean_and_narrows_with_more_identities() -> None:
    rng = np.random.default_rng(1)
    few_ids, many_ids = np.repeat(np.arange(10), 3), np.repeat(np.arange(200), 3)
    few, many = rng.random(few_ids.size), rng.random(many_ids.size)
    low, high = bootstrap_interval(few, few_ids, resamples=500)
    assert low < few.mean() < high
    low_many, high_many = bootstrap_interval(many, many_ids, resamples=500)
    assert high_many - low_many < high - low


def test_resampling_unit_is_the_identity() -> None:
    # Each identity's queries all score the same: resampling identities gives the same spread whether each has
    # one query or fifty. Resampling single queries would shrink the interval ~7x for fifty.
    values = np.arange(20, dtype=float) / 19
    one = bootstrap_interval(values, np.arange(20), resamples=2000, seed=3)
    fifty = bootstrap_interval(np.repeat(values, 50), np.repeat(np.arange(20), 50), resamples=2000, seed=3)
    assert fifty == pytest.approx(one)


def test_paired_difference() -> None:
    ids = np.repeat(np.arange(30), 2)
    rng = np.random.default_rng(2)
    first = rng.random(ids.size)
    same = paired_difference(first, first, ids, resamples=300)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}
    better = paired_difference(first, first + 0.1, ids, resamples=300)
    assert better["difference"] == pytest.approx(0.1)
    assert better["low"] == pytest.approx(0.1) and better["high"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same queries"):
        paired_difference(first, first[:-1], ids)
