"""Tracklet pooling and per-label scoring (model/pooling.py): checked against direct numpy on seeded vectors."""

from __future__ import annotations

import numpy as np
import pytest

from model.pooling import LABEL_RULES, label_score_matrix, label_scores, pool_embeddings, pool_groups


def unit_rows(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_one_crop_pools_to_itself_with_every_method() -> None:
    crop = unit_rows(1)
    for method in ("mean", "consistency"):
        assert np.allclose(pool_embeddings(crop, method), crop[0], atol=1e-6)


def test_mean_is_the_renormalised_mean_of_unit_rows() -> None:
    rows = unit_rows(5) * np.array([[1.0], [3.0], [0.5], [2.0], [1.0]], dtype=np.float32)  # scale must not matter
    expected = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(axis=0)
    pooled = pool_embeddings(rows, "mean")
    assert np.allclose(pooled, expected / np.linalg.norm(expected), atol=1e-6)
    assert pooled.dtype == np.float32 and np.linalg.norm(pooled) == pytest.approx(1.0, abs=1e-6)


def test_consistency_weighting_pulls_away_from_an_outlier_crop() -> None:
    base = unit_rows(1, seed=1)[0]
    rng = np.random.default_rng(2)
    agreeing = base + 0.1 * rng.normal(size=(4, base.size))
    outlier = -base + 0.1 * rng.normal(size=base.size)
    rows = np.vstack([agreeing, outlier])
    mean, weighted = pool_embeddings(rows, "mean"), pool_embeddings(rows, "consistency")
    assert weighted @ base > mean @ base


def test_pool_groups_and_bad_arguments() -> None:
    rows = unit_rows(4)
    pooled = pool_groups(rows, [(0, 2), (1,), (3,)])
    assert pooled.shape == (3, rows.shape[1])
    assert np.allclose(pooled[1], rows[1]) and np.allclose(pooled[0], pool_embeddings(rows[[0, 2]]))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_embeddings(rows, "median")
    with pytest.raises(ValueError, match="N >= 1"):
        pool_embeddings(rows[:0])


def test_label_rules() -> None:
    sims = [0.9, 0.8, 0.7, 0.6, 0.85]
    labels = ["a", "b", "a", "a", "b"]
    assert label_scores(sims, labels, "max") == [("a", 0.9), ("b", 0.85)]
    top2 = dict(label_scores(sims, labels, "mean_top2"))
    assert top2 == pytest.approx({"a": 0.8, "b": 0.825})
    assert [label for label, _ in label_scores(sims, labels, "mean_top2")] == ["b", "a"]
    assert dict(label_scores(sims, labels, "mean_top3")) == pytest.approx({"a": 2.2 / 3, "b": 0.825})
    with pytest.raises(ValueError, match="unknown label rule"):
        label_scores(sims, labels, "median")


@pytest.mark.parametrize("rule", LABEL_RULES)
def test_matrix_form_agrees_with_the_per_query_form(rule: str) -> None:
    rng = np.random.default_rng(3)
    sims = rng.uniform(-1, 1, size=(6, 20))
    labels = [f"p{i}" for i in rng.integers(0, 5, size=20)]
    names, matrix = label_score_matrix(sims, labels, rule)
    assert list(names) == list(dict.fromkeys(labels))
    for row, expected in zip(matrix, (dict(label_scores(s, labels, rule)) for s in sims), strict=True):
        assert dict(zip(names.tolist(), row.tolist(), strict=True)) == pytest.approx(expected)
