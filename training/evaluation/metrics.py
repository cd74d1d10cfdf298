"""Retrieval metrics on distance matrices: the SoccerNet-ReID protocol and the Market-1501 protocol.

Pure functions on numpy arrays, independent of the training loop::

    distmat = compute_distance_matrix(query_embeddings, gallery_embeddings, metric="cosine")
    metrics = evaluate_soccernet(distmat, q_pids, g_pids, q_actions, g_actions)
    print(metrics["mAP"], metrics["rank1"])

Definitions (taken from the public scorers, re-implemented here):

- Average precision of one ranking with hits h_1 < h_2 < ... < h_R (1-based ranks of the relevant gallery
  items): AP = (1/R) * sum_r r / h_r, i.e. the mean of the precision measured at every hit. mAP is the plain
  mean of AP.
- CMC(k) of one query is 1 when a relevant item is within the first k ranks; the curve is averaged over
  queries.
- SoccerNet (``SoccerNet.Evaluation.ReIdentification.evaluate``, the official challenge scorer, and
  ``eval_soccernetv3`` of the sn-reid repository): every query is ranked only against the gallery items of
  its own action; a query whose identity has no gallery item in its action is an error (ValueError); mAP and
  rank-1 are averaged over all queries. The official scorer reports rank-1 only; for the longer CMC curve a
  query whose action has fewer than k gallery items counts as a hit at k (its positive is necessarily inside
  the ranking). sn-reid's torchreid copy instead zero-pads every curve past the smallest action; rank-1 and
  mAP are identical either way.
- Market-1501 (torchreid ``eval_market1501``): gallery items with the query's identity *and* camera are
  removed from its ranking; queries left without a positive are skipped; the curve is cut at ``max_rank``
  (at most the gallery size). A query whose filtered ranking is shorter than ``max_rank`` keeps its value 1
  past its end.

Ties are broken by gallery index (``np.argsort(kind="stable")``), so results are deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

# Queries are scored in chunks so that the (chunk, num_g) intermediate arrays stay small on large galleries
# (Market-1501: 3368 x 15913 would otherwise need several GiB of int64 temporaries).
_QUERY_CHUNK = 512


def compute_distance_matrix(
    q_feats: np.ndarray, g_feats: np.ndarray, metric: Literal["cosine", "euclidean"] = "cosine"
) -> np.ndarray:
    """Pairwise distances, smaller = closer.

    Args:
        q_feats: (num_q, D) query features.
        g_feats: (num_g, D) gallery features.
        metric: "cosine" gives 1 - cos(q, g) in [0, 2] (features need not be normalised);
            "euclidean" gives the L2 distance ||q - g||.

    Returns:
        (num_q, num_g) float64 distance matrix.
    """
    q = np.asarray(q_feats, dtype=np.float64)
    g = np.asarray(g_feats, dtype=np.float64)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"expected (num_q, D) and (num_g, D) features, got {q.shape} and {g.shape}")
    if metric == "cosine":
        # Zero vectors get norm 1 so they end up at distance 1 from everything instead of producing NaN.
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return 1.0 - qn @ gn.T
    if metric == "euclidean":
        sq = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * (q @ g.T)
        # Rounding can make the expanded form slightly negative for identical vectors.
        return np.sqrt(np.maximum(sq, 0.0))
    raise ValueError(f"unknown metric {metric!r}; valid: 'cosine', 'euclidean'")


def average_precision(hits: np.ndarray) -> float:
    """AP of one ranking: mean of precision@rank over the ranks that hold a relevant item.

    Args:
        hits: (n,) bool, hits[i] is True when the item ranked i+1 is relevant. Must contain a True.
    """
    hits = np.asarray(hits, dtype=bool)
    num_rel = int(hits.sum())
    if num_rel == 0:
        raise ValueError("average precision is undefined for a ranking without a relevant item")
    precision_at = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precision_at[hits].sum() / num_rel)


def _score_rankings(
    hits: np.ndarray, valid: np.ndarray, max_rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP and first-hit rank of rankings from which some positions are removed.

    Args:
        hits: (n, m) bool, relevance of each sorted position.
        valid: (n, m) bool, False where the position is removed from the ranking.
        max_rank: length of the CMC curve.

    Returns:
        ap (n,) float64 (NaN where no valid hit), has_pos (n,) bool, cmc (n, max_rank) bool per query.
    """
    hits = hits & valid
    # 1-based rank of every position once the removed ones are dropped.
    kept_rank = np.cumsum(valid, axis=1)
    hits_so_far = np.cumsum(hits, axis=1)
    num_rel = hits_so_far[:, -1] if hits.shape[1] else np.zeros(hits.shape[0], dtype=np.int64)
    has_pos = num_rel > 0
    precision = np.where(hits, hits_so_far / np.maximum(kept_rank, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = precision.sum(axis=1) / num_rel
    if hits.shape[1]:
        first_hit = np.where(has_pos, np.argmax(hits, axis=1), 0)
        first_rank = np.take_along_axis(kept_rank, first_hit[:, None], axis=1)[:, 0]
    else:
        first_rank = np.zeros(hits.shape[0], dtype=np.int64)
    cmc = (first_rank[:, None] <= np.arange(1, max_rank + 1)[None, :]) & has_pos[:, None]
    return ap, has_pos, cmc


def _summarise(ap: np.ndarray, cmc: np.ndarray) -> dict[str, Any]:
    """Mean metrics from per-query AP (n,) and CMC indicators (n, max_rank)."""
    curve = cmc.mean(axis=0) if cmc.shape[0] else np.zeros(cmc.shape[1])
    out: dict[str, Any] = {"mAP": float(ap.mean()) if ap.size else 0.0}
    for k in (1, 5, 10):
        # Curves shorter than k (tiny galleries) report their last value.
        out[f"rank{k}"] = float(curve[min(k, curve.size) - 1]) if curve.size else 0.0
    out["cmc"] = [float(v) for v in curve]
    out["num_queries"] = int(ap.size)
    return out


def group_labels(groups: Sequence[Hashable] | np.ndarray) -> list[Hashable]:
    """Group labels as a list of hashable Python values; rows of a 2-D array become tuples."""
    if isinstance(groups, np.ndarray):
        # np.asarray on tuple labels would give a 2-D array whose rows (lists) are unhashable.
        return [tuple(row) for row in groups.tolist()] if groups.ndim > 1 else groups.tolist()
    return list(groups)


def group_indices(groups: Sequence[Hashable] | np.ndarray) -> dict[Hashable, np.ndarray]:
    """Map each distinct group label to the ascending indices that carry it (labels of any hashable type)."""
    buckets: dict[Hashable, list[int]] = {}
    for i, key in enumerate(group_labels(groups)):
        buckets.setdefault(key, []).append(i)
    return {key: np.asarray(idx, dtype=np.int64) for key, idx in buckets.items()}


def _check_shapes(distmat: np.ndarray, q_len: int, g_len: int, q_extra: int, g_extra: int) -> None:
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be (num_q, num_g), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    if (q_len, q_extra) != (num_q, num_q) or (g_len, g_extra) != (num_g, num_g):
        raise ValueError(
            f"distmat is {num_q}x{num_g} but query arrays have lengths {q_len}/{q_extra} "
            f"and gallery arrays {g_len}/{g_extra}"
        )


def evaluate_soccernet(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_actions: Sequence[Hashable] | np.ndarray,
    g_actions: Sequence[Hashable] | np.ndarray,
    max_rank: int = 50,
) -> dict[str, Any]:
    """Official SoccerNet-ReID protocol: each query ranked against the gallery items of its own action only.

    Args:
        distmat: (num_q, num_g) distances, smaller = closer. Cross-action entries are ignored (may be +inf).
        q_pids: (num_q,) identity of each query (identities only need to be unique within an action).
        g_pids: (num_g,) identity of each gallery item.
        q_actions: (num_q,) action label of each query (any hashable: int, str, tuple).
        g_actions: (num_g,) action label of each gallery item.
        max_rank: length of the returned CMC curve.

    Returns:
        {"mAP", "rank1", "rank5", "rank10": float in [0, 1], "cmc": list of max_rank floats,
        "num_queries": int}, averaged over all queries.

    Raises:
        ValueError: a query's identity has no gallery item in its action (as the official scorer does),
            or the shapes disagree.
    """
    distmat = np.asarray(distmat, dtype=np.float64)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    _check_shapes(distmat, len(q_pids), len(g_pids), len(q_actions), len(g_actions))
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    g_groups = group_indices(g_actions)
    all_ap = np.empty(len(q_pids))
    all_cmc = np.zeros((len(q_pids), max_rank), dtype=bool)
    for action, q_idx in group_indices(q_actions).items():
        g_idx = g_groups.get(action, np.empty(0, dtype=np.int64))
        # Ascending gallery indices + stable sort = the same tie order as sorting the full row, then
        # filtering.
        order = np.argsort(distmat[np.ix_(q_idx, g_idx)], axis=1, kind="stable")
        hits = g_pids[g_idx][order] == q_pids[q_idx][:, None]
        ap, has_pos, cmc = _score_rankings(hits, np.ones_like(hits), max_rank)
        if not has_pos.all():
            bad = int(q_idx[np.flatnonzero(~has_pos)[0]])
            raise ValueError(
                f"query {bad} (pid {q_pids[bad]!r}, action {action!r}) has no gallery item of its identity "
                f"in its action; the SoccerNet protocol requires one for every query"
            )
        all_ap[q_idx] = ap
        all_cmc[q_idx] = cmc
    return _summarise(all_ap, all_cmc)


def evaluate_market(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    max_rank: int = 50,
) -> dict[str, Any]:
    """Market-1501 protocol: gallery items sharing the query's identity and camera are removed.

    Args:
        distmat: (num_q, num_g) distances, smaller = closer.
        q_pids, g_pids: (num_q,), (num_g,) identities.
        q_cams, g_cams: (num_q,), (num_g,) camera ids.
        max_rank: CMC length, cut to num_g when the gallery is smaller.

    Returns:
        {"mAP", "rank1", "rank5", "rank10", "cmc", "num_queries", "num_skipped"}; averages are over the
        queries that keep at least one positive.

    Raises:
        ValueError: no query has a positive, or the shapes disagree.
    """
    distmat = np.asarray(distmat, dtype=np.float64)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    _check_shapes(distmat, len(q_pids), len(g_pids), len(q_cams), len(g_cams))
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1 and the gallery non-empty, got {max_rank}")
    aps, cmcs = [], []
    for start in range(0, num_q, _QUERY_CHUNK):
        rows = slice(start, start + _QUERY_CHUNK)
        order = np.argsort(distmat[rows], axis=1, kind="stable")
        same_pid = g_pids[order] == q_pids[rows, None]
        valid = ~(same_pid & (g_cams[order] == q_cams[rows, None]))
        ap, has_pos, cmc = _score_rankings(same_pid, valid, max_rank)
        aps.append(ap[has_pos])
        cmcs.append(cmc[has_pos])
    all_ap = np.concatenate(aps) if aps else np.empty(0)
    if all_ap.size == 0:
        raise ValueError("no query identity appears in the gallery under another camera")
    out = _summarise(all_ap, np.concatenate(cmcs))
    out["num_skipped"] = num_q - int(all_ap.size)
    if out["num_skipped"]:
        logger.info("market evaluation skipped %d queries without a valid positive", out["num_skipped"])
    return out
