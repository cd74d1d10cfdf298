"""Tracklet pooling and per-label scoring: pure numpy, shared by the service (POST /query) and by training's
calibration and benchmarks, so the figures measured offline are the ones served.

    pooled = pool_embeddings(crops_emb)                    # (N, D) unit rows of one tracklet -> (D,) unit
    labels, scores = label_scores(sim, gallery_labels)     # (G,) similarities -> best score per label

Query pooling (``POOLING_METHODS``):
- ``mean``: mean of the unit embeddings, renormalised (the default: best or tied on CUHK03, see docs/performance.md).
- ``consistency``: a quality-weighted mean without an extra quality model: each crop is weighted by its cosine
  to the plain mean (clipped at 0), so a crop that disagrees with the rest of the tracklet (occlusion, a
  tracker switch) counts less.

Per-label scoring of the gallery (``LABEL_RULES``): ``max`` (best item of the label, the default), ``mean_top2``
and ``mean_top3`` (mean of the label's k best items, fewer when the label has fewer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

POOLING_METHODS = ("mean", "consistency")
DEFAULT_POOLING = "mean"
LABEL_RULES = ("max", "mean_top2", "mean_top3")
DEFAULT_LABEL_RULE = "max"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pool_embeddings(embeddings: np.ndarray, method: str = DEFAULT_POOLING) -> np.ndarray:
    """Pool the crops of one tracklet into one unit query embedding.

    Args:
        embeddings: (N, D) crop embeddings, N >= 1 (normalised here, so any positive scale is fine).
        method: one of ``POOLING_METHODS``.

    Returns:
        (D,) float32 unit vector. A single crop comes back as itself (normalised), whatever the method.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"expected (N, D) embeddings with N >= 1, got shape {emb.shape}")
    if method not in POOLING_METHODS:
        raise ValueError(f"unknown pooling {method!r}; choose from {list(POOLING_METHODS)}")
    unit = _unit(emb)
    mean = _unit(unit.mean(axis=0))
    if method == "consistency" and unit.shape[0] > 1:
        weights = np.clip(unit @ mean, 0.0, None)
        if weights.sum() > 0:
            mean = _unit((weights[:, None] * unit).sum(axis=0))
    return mean.astype(np.float32)


def pool_groups(embeddings: np.ndarray, groups: Sequence[Sequence[int]], method: str = DEFAULT_POOLING) -> np.ndarray:
    """Pool each group of rows: (Q, D) crop embeddings + T index lists -> (T, D) float32 unit queries."""
    emb = np.asarray(embeddings)
    if not groups:
        return np.zeros((0, emb.shape[1] if emb.ndim == 2 else 0), dtype=np.float32)
    return np.stack([pool_embeddings(emb[list(indices)], method) for indices in groups])


def label_scores(
    similarities: Sequence[float] | np.ndarray, labels: Sequence[str], rule: str = DEFAULT_LABEL_RULE
) -> list[tuple[str, float]]:
    """Score each label from the similarities of its gallery items; best first (ties: first seen first).

    Args:
        similarities: (G,) cosine of the query to each gallery item considered.
        labels: (G,) label of each of those items.
        rule: one of ``LABEL_RULES``.

    Returns:
        [(label, score)] sorted by score, descending.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}; choose from {list(LABEL_RULES)}")
    sims = np.asarray(similarities, dtype=np.float64).ravel()
    if sims.size != len(labels):
        raise ValueError(f"{sims.size} similarities for {len(labels)} labels")
    per_label: dict[str, list[float]] = {}
    for label, score in zip(labels, sims.tolist(), strict=True):
        per_label.setdefault(label, []).append(score)
    k = 1 if rule == "max" else int(rule.removeprefix("mean_top"))
    if k == 1:  # the mean of one value is that value: max() spares a numpy call per label on the query path
        scored = [(label, max(values)) for label, values in per_label.items()]
    else:
        scored = [(label, float(np.mean(sorted(values, reverse=True)[:k]))) for label, values in per_label.items()]
    # sorted() is stable: equal scores keep the order labels were first seen in.
    return sorted(scored, key=lambda item: -item[1])


def label_score_matrix(
    similarities: np.ndarray, labels: Sequence[object] | np.ndarray, rule: str = DEFAULT_LABEL_RULE
) -> tuple[np.ndarray, np.ndarray]:
    """``label_scores`` for many queries against a whole gallery at once (calibration and benchmarks).

    Args:
        similarities: (T, G) cosine of each query to each gallery item.
        labels: (G,) label of each gallery item.
        rule: one of ``LABEL_RULES``.

    Returns:
        unique labels (L,) in order of first appearance, and (T, L) float64 scores.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}; choose from {list(LABEL_RULES)}")
    sims = np.asarray(similarities, dtype=np.float64)
    labels_arr = np.asarray(labels)
    if sims.ndim != 2 or sims.shape[1] != labels_arr.shape[0]:
        raise ValueError(f"expected (T, {labels_arr.shape[0]}) similarities, got {sims.shape}")
    _, first, inverse = np.unique(labels_arr, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique() sorts; give the labels back in first-seen order
    k = 1 if rule == "max" else int(rule.removeprefix("mean_top"))
    out = np.empty((sims.shape[0], order.size))
    for column, code in enumerate(order):
        block = sims[:, inverse == code]
        if k == 1:
            out[:, column] = block.max(axis=1)
        else:
            out[:, column] = -np.sort(-block, axis=1)[:, :k].mean(axis=1)
    return labels_arr[first[order]], out
