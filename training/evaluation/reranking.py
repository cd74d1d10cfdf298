"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017).

Usage on a SoccerNet split, one action at a time::

    distmat = rerank_per_group(q_feats, g_feats, q_actions, g_actions)   # cross-action entries are +inf
    metrics = evaluate_soccernet(distmat, q_pids, g_pids, q_actions, g_actions)

Method (hyper-parameters and steps from the paper and its public reference code): all N = num_q + num_g
items are pooled; distances are squared and every column is divided by its maximum; each item's k-reciprocal
set R(p, k1) (items in its top-(k1+1) whose own top-(k1+1) contains it) is expanded with the k-reciprocal
sets R(c, k1/2) of its members that overlap it by more than 2/3; the item is encoded as a vector V_p over
all N items with weights exp(-d(p, c)) on that set, normalised to sum 1; V_p is replaced by the mean of the
V of its k2 nearest items (local query expansion); the Jaccard distance 1 - sum min(V_p, V_g) / sum max(V_p,
V_g) is blended with the normalised distance: d* = (1 - lambda) * d_J + lambda * d.

Memory grows with the square of the number of items: the pooled (N, N) distance, rank and V matrices are
kept, so re-ranking a whole Market-1501 test split (N ~ 19k) needs several GiB; a SoccerNet action (tens of
crops) needs kilobytes, which is why ``rerank_per_group`` runs it per action.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np

from training.evaluation.metrics import compute_distance_matrix, group_indices, group_labels

logger = logging.getLogger(__name__)


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Items j in the top-(k+1) of i whose own top-(k+1) contains i; initial_rank is (N, N) neighbour ids."""
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def k_reciprocal_rerank(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query-gallery distances.

    Args:
        q_g_dist: (num_q, num_g) original distances, smaller = closer.
        q_q_dist: (num_q, num_q) query-query distances.
        g_g_dist: (num_g, num_g) gallery-gallery distances.
        k1: size of the k-reciprocal neighbourhood.
        k2: size of the local query expansion (1 disables it).
        lambda_value: weight of the original distance in the blend.

    Returns:
        (num_q, num_g) float64 re-ranked distances. Memory is O((num_q + num_g)^2).
    """
    num_q, num_g = q_g_dist.shape
    if q_q_dist.shape != (num_q, num_q) or g_g_dist.shape != (num_g, num_g):
        raise ValueError(
            f"inconsistent shapes: q_g {q_g_dist.shape}, q_q {q_q_dist.shape}, g_g {g_g_dist.shape}"
        )
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, k2 >= 1 and 0 <= lambda <= 1, got {k1}, {k2}, {lambda_value}")
    if num_q == 0 or num_g == 0:
        return np.zeros((num_q, num_g))
    dist = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]]).astype(np.float64) ** 2
    # Column-wise max normalisation (then transposing) follows the reference code; the epsilon only guards an
    # all-zero column (every item identical), where the reference would divide by zero.
    dist = (dist / np.maximum(dist.max(axis=0, keepdims=True), 1e-12)).T
    n = dist.shape[0]
    initial_rank = np.argsort(dist, axis=1, kind="stable")
    half_k1 = round(k1 / 2)

    v = np.zeros((n, n))
    for i in range(n):
        recip = _k_reciprocal(initial_rank, i, k1)
        expanded = recip
        for cand in recip:
            cand_recip = _k_reciprocal(initial_rank, int(cand), half_k1)
            if np.intersect1d(cand_recip, recip).size > 2.0 / 3.0 * cand_recip.size:
                expanded = np.append(expanded, cand_recip)
        expanded = np.unique(expanded)
        weight = np.exp(-dist[i, expanded])
        v[i, expanded] = weight / weight.sum()

    if k2 != 1:
        v = v[initial_rank[:, :k2]].mean(axis=1)

    # Every V row sums to 1, so sum max(V_p, V_g) = 2 - sum min(V_p, V_g); only the columns where V_p is
    # non-zero contribute to the sum of minima, which keeps each query at O(N * |support|).
    jaccard = np.empty((num_q, n))
    for i in range(num_q):
        support = np.flatnonzero(v[i])
        shared = np.minimum(v[i, support][None, :], v[:, support]).sum(axis=1)
        jaccard[i] = 1.0 - shared / (2.0 - shared)

    final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q]
    return final[:, num_q:]


def rerank_per_group(
    q_feats: np.ndarray,
    g_feats: np.ndarray,
    q_groups: Sequence[Hashable] | np.ndarray,
    g_groups: Sequence[Hashable] | np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: Literal["cosine", "euclidean"] = "cosine",
) -> np.ndarray:
    """k-reciprocal re-ranking done separately inside each group (SoccerNet: each action).

    Args:
        q_feats: (num_q, D) query features.
        g_feats: (num_g, D) gallery features.
        q_groups: (num_q,) group label of each query.
        g_groups: (num_g,) group label of each gallery item.
        k1, k2, lambda_value: see ``k_reciprocal_rerank``.
        metric: base distance passed to ``compute_distance_matrix``.

    Returns:
        (num_q, num_g) float64 distances; entries between different groups are +inf. Peak memory is
        O(largest group size^2), not O((num_q + num_g)^2).
    """
    q_feats, g_feats = np.asarray(q_feats), np.asarray(g_feats)
    if len(q_groups) != len(q_feats) or len(g_groups) != len(g_feats):
        raise ValueError("one group label per feature row is required")
    out = np.full((len(q_feats), len(g_feats)), np.inf)
    g_index = group_indices(g_groups)
    for group, q_idx in group_indices(q_groups).items():
        g_idx = g_index.get(group)
        if g_idx is None:
            continue
        qf, gf = q_feats[q_idx], g_feats[g_idx]
        out[np.ix_(q_idx, g_idx)] = k_reciprocal_rerank(
            compute_distance_matrix(qf, gf, metric),
            compute_distance_matrix(qf, qf, metric),
            compute_distance_matrix(gf, gf, metric),
            k1=k1,
            k2=k2,
            lambda_value=lambda_value,
        )
    logger.debug("re-ranked %d query groups", len(set(group_labels(q_groups))))
    return out
