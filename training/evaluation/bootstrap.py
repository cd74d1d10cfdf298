"""Per-query retrieval scores and bootstrap intervals over query identities.

    ap, rank1 = market_per_query(distmat, q_pids, g_pids, q_cams, g_cams)    # (n,), (n,) for scorable queries
    low, high = bootstrap_interval(ap, ids, resamples=2000, seed=0)           # 95% interval of the mean AP

Queries of one person are not independent (the same body, the same gallery crops), so the resampling unit is
the identity: each resample draws identities with replacement and averages all their queries. A paired
interval (``paired_difference``) resamples the same identities for two models scored on the same queries,
which is what a comparison needs.
"""

from __future__ import annotations

import logging

import numpy as np

from training.evaluation.metrics import _score_rankings

logger = logging.getLogger(__name__)


def market_per_query(
    distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Market protocol per query (same person and camera removed from its gallery).

    distmat (n_q, n_g), smaller = closer -> (ap (k,), rank1 (k,) float 0/1, kept (n_q,) bool), where the k
    kept queries are those with a positive left; their mean AP is ``evaluate_market``'s mAP.
    """
    distmat = np.asarray(distmat, dtype=np.float64)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    order = np.argsort(distmat, axis=1, kind="stable")
    hits = g_pids[order] == q_pids[:, None]
    valid = ~((g_pids[order] == q_pids[:, None]) & (g_cams[order] == q_cams[:, None]))
    ap, has_pos, cmc = _score_rankings(hits, valid, 1)
    return ap[has_pos], cmc[has_pos, 0].astype(np.float64), has_pos


def _identity_rows(ids: np.ndarray) -> list[np.ndarray]:
    labels = np.asarray(ids)
    return [np.flatnonzero(labels == value) for value in np.unique(labels)]


def _resampled_means(values: np.ndarray, ids: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(R, V) means of ``values`` (n, V) over identity resamples (the same draws for every column)."""
    groups = _identity_rows(ids)
    sums = np.stack([values[rows].sum(axis=0) for rows in groups])  # (I, V)
    counts = np.array([len(rows) for rows in groups], dtype=np.float64)  # (I,)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(groups), size=(resamples, len(groups)))
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)[:, None]


def bootstrap_interval(
    values: np.ndarray, ids: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (n,) when identities ``ids`` (n,) are resampled."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != np.asarray(ids).shape or values.ndim != 1 or values.size == 0:
        raise ValueError(f"values and ids must be equal-length non-empty 1-D arrays, got {values.shape}")
    means = _resampled_means(values[:, None], np.asarray(ids), resamples, seed)[:, 0]
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def paired_difference(
    first: np.ndarray, second: np.ndarray, ids: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """mean(second) - mean(first) over the same queries, with its identity-bootstrap interval."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"paired scores must cover the same queries: {first.shape} vs {second.shape}")
    means = _resampled_means(np.stack([first, second], axis=1), np.asarray(ids), resamples, seed)
    diff = means[:, 1] - means[:, 0]
    tail = (1.0 - level) / 2.0
    return {
        "difference": float(second.mean() - first.mean()),
        "low": float(np.quantile(diff, tail)),
        "high": float(np.quantile(diff, 1.0 - tail)),
    }
