"""Evaluation protocols against a naive re-statement of their definitions, plus hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.metrics import (
    average_precision,
    compute_distance_matrix,
    evaluate_market,
    evaluate_soccernet,
)

# ------------------------------------------------ naive references (loops, one query at a time)


def _naive_ap(hits: list[bool]) -> float:
    found, precisions = 0, []
    for rank, hit in enumerate(hits, start=1):
        if hit:
            found += 1
            precisions.append(found / rank)
    return sum(precisions) / len(precisions)


def _naive_ranking(row: np.ndarray, candidates: list[int]) -> list[int]:
    # Ties broken by gallery index, the documented convention.
    return sorted(candidates, key=lambda j: (row[j], j))


def _naive_soccernet(distmat, q_pids, g_pids, q_actions, g_actions, max_rank):
    aps, curves = [], []
    for i in range(len(q_pids)):
        same_action = [j for j in range(len(g_pids)) if g_actions[j] == q_actions[i]]
        hits = [g_pids[j] == q_pids[i] for j in _naive_ranking(distmat[i], same_action)]
        if not any(hits):
            raise ValueError("query without positive")
        aps.append(_naive_ap(hits))
        curves.append([any(hits[:k]) for k in range(1, max_rank + 1)])
    return float(np.mean(aps)), np.mean(np.array(curves, dtype=float), axis=0)


def _naive_market(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    max_rank = min(max_rank, len(g_pids))
    aps, curves = [], []
    for i in range(len(q_pids)):
        kept = [
            j for j in range(len(g_pids)) if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])
        ]
        hits = [g_pids[j] == q_pids[i] for j in _naive_ranking(distmat[i], kept)]
        if not any(hits):
            continue
        aps.append(_naive_ap(hits))
        curves.append([any(hits[:k]) for k in range(1, max_rank + 1)])
    return float(np.mean(aps)), np.mean(np.array(curves, dtype=float), axis=0), len(aps)


def _random_soccernet(seed: int, num_actions: int = 6):
    """Random problem where every query has a positive in its action; integer distances force many ties."""
    rng = np.random.default_rng(seed)
    q_pids, g_pids, q_act, g_act = [], [], [], []
    for a in range(num_actions):
        ids = rng.permutation(30)[: rng.integers(2, 6)]
        n_g = rng.integers(len(ids), 12)
        gal = np.concatenate([ids, rng.choice(ids, n_g - len(ids))])
        g_pids += list(gal)
        g_act += [f"action-{a}"] * len(gal)
        n_q = rng.integers(1, 5)
        q_pids += list(rng.choice(ids, n_q))
        q_act += [f"action-{a}"] * n_q
    # Shuffle the gallery so that actions interleave.
    perm = rng.permutation(len(g_pids))
    g_pids, g_act = np.array(g_pids)[perm], np.array(g_act)[perm]
    distmat = rng.integers(0, 4, size=(len(q_pids), len(g_pids))).astype(float)
    return distmat, np.array(q_pids), g_pids, np.array(q_act), g_act


# ---------------------------------------------------------------- hand-computed cases


def test_average_precision_hand_values() -> None:
    assert average_precision(np.array([1, 0, 1], dtype=bool)) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0, 1], dtype=bool)) == pytest.approx(0.5)
    assert average_precision(np.array([0, 0, 1, 1], dtype=bool)) == pytest.approx((1 / 3 + 2 / 4) / 2)
    with pytest.raises(ValueError):
        average_precision(np.zeros(3, dtype=bool))


def test_soccernet_hand_computed() -> None:
    # Query 0 (pid 7, action A): ranking within A is g1(7), g0(3), g3(7) -> hits [1,0,1] -> AP 5/6.
    # Query 1 (pid 3, action B): ranking within B is g4(5), g2(3) -> hits [0,1] -> AP 1/2.
    distmat = np.array(
        [
            [0.5, 0.1, 0.0, 0.9, 0.0],
            [0.0, 0.0, 0.4, 0.0, 0.2],
        ]
    )
    g_pids = np.array([3, 7, 3, 7, 5])
    g_actions = np.array(["A", "A", "B", "A", "B"])
    m = evaluate_soccernet(distmat, np.array([7, 3]), g_pids, np.array(["A", "B"]), g_actions, max_rank=3)
    assert m["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2, abs=1e-12)
    assert m["rank1"] == pytest.approx(0.5)
    # Query 1's action has two gallery items: its positive is at rank 2, so it counts from k = 2 onwards.
    assert m["cmc"] == pytest.approx([0.5, 1.0, 1.0])
    assert m["num_queries"] == 2


def test_soccernet_query_without_positive_in_its_action_raises() -> None:
    # pid 4 exists in the gallery, but only in another action.
    distmat = np.zeros((1, 3))
    with pytest.raises(ValueError, match="no gallery item"):
        evaluate_soccernet(distmat, np.array([4]), np.array([1, 2, 4]), ["a"], ["a", "a", "b"])
    # An action with queries but no gallery item at all is the same error.
    with pytest.raises(ValueError, match="no gallery item"):
        evaluate_soccernet(np.zeros((1, 2)), np.array([1]), np.array([1, 1]), ["c"], ["a", "b"])


def test_soccernet_other_actions_never_affect_a_query() -> None:
    distmat, q_pids, g_pids, q_act, g_act = _random_soccernet(seed=3)
    base = evaluate_soccernet(distmat, q_pids, g_pids, q_act, g_act)
    # Put every cross-action item at the very top (and also at +inf): nothing may change.
    cross = q_act[:, None] != g_act[None, :]
    for fill in (-1e9, np.inf):
        moved = np.where(cross, fill, distmat)
        assert evaluate_soccernet(moved, q_pids, g_pids, q_act, g_act) == base
    # Identities are action-local: extra gallery items of another action carrying every query's pid at
    # distance 0 must not count as positives nor push anything down.
    extra = np.zeros((len(q_pids), len(q_pids)))
    grown = evaluate_soccernet(
        np.hstack([extra, distmat]),
        q_pids,
        np.concatenate([q_pids, g_pids]),
        q_act,
        np.concatenate([np.array(["other"] * len(q_pids)), g_act]),
    )
    assert grown == base


def test_soccernet_same_pid_in_other_action_is_not_a_match() -> None:
    # Query pid 1 in action "x"; gallery pid 1 in action "y" is closest overall but must be ignored.
    distmat = np.array([[0.0, 0.5, 0.2]])
    m = evaluate_soccernet(distmat, np.array([1]), np.array([1, 1, 2]), ["x"], ["y", "x", "x"])
    assert m["rank1"] == 0.0
    assert m["mAP"] == pytest.approx(0.5)


def test_market_same_id_same_camera_removed() -> None:
    # g0 has the query's pid and camera -> removed; g1 (other pid) and g2 (same pid, other camera) remain.
    distmat = np.array([[0.0, 0.1, 0.2]])
    m = evaluate_market(distmat, np.array([5]), np.array([5, 6, 5]), np.array([1]), np.array([1, 1, 2]))
    assert m["mAP"] == pytest.approx(0.5)
    assert m["rank1"] == 0.0
    # cmc has max_rank = num_g entries; the filtered ranking has 2 items, the positive at rank 2.
    assert m["cmc"] == pytest.approx([0.0, 1.0, 1.0])


def test_market_skips_queries_without_valid_positive() -> None:
    distmat = np.array([[0.3, 0.1], [0.9, 0.0]])
    # Query 0's only positive shares its camera; query 1 has a valid positive at rank 1.
    m = evaluate_market(distmat, np.array([1, 2]), np.array([1, 2]), np.array([0, 0]), np.array([0, 1]))
    assert m["num_queries"] == 1
    assert m["num_skipped"] == 1
    assert m["mAP"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        evaluate_market(distmat[:1], np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 1]))


# ---------------------------------------------------------------- agreement with the naive references


@pytest.mark.parametrize("seed", range(5))
def test_soccernet_agrees_with_naive_reference(seed: int) -> None:
    distmat, q_pids, g_pids, q_act, g_act = _random_soccernet(seed)
    ref_map, ref_cmc = _naive_soccernet(distmat, q_pids, g_pids, q_act, g_act, max_rank=20)
    m = evaluate_soccernet(distmat, q_pids, g_pids, q_act, g_act, max_rank=20)
    assert abs(m["mAP"] - ref_map) < 1e-6
    assert np.max(np.abs(np.array(m["cmc"]) - ref_cmc)) < 1e-6
    assert m["rank1"] == pytest.approx(ref_cmc[0], abs=1e-6)
    assert m["rank5"] == pytest.approx(ref_cmc[4], abs=1e-6)
    assert m["num_queries"] == len(q_pids)


@pytest.mark.parametrize("seed", range(5))
def test_market_agrees_with_naive_reference(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    num_q, num_g = 25, 60
    q_pids, g_pids = rng.integers(0, 10, num_q), rng.integers(0, 10, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    distmat = rng.integers(0, 6, size=(num_q, num_g)).astype(float) + (seed % 2) * rng.random((num_q, num_g))
    ref_map, ref_cmc, n_valid = _naive_market(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    m = evaluate_market(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    assert abs(m["mAP"] - ref_map) < 1e-6
    assert len(m["cmc"]) == 50
    assert np.max(np.abs(np.array(m["cmc"]) - ref_cmc)) < 1e-6
    assert m["num_queries"] == n_valid


def test_market_chunking_matches_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.evaluation.metrics as ev

    rng = np.random.default_rng(7)
    distmat = rng.random((40, 30))
    pids = (rng.integers(0, 5, 40), rng.integers(0, 5, 30))
    cams = (rng.integers(0, 2, 40), rng.integers(0, 2, 30))
    args = (distmat, *pids, *cams)
    whole = ev.evaluate_market(*args)
    monkeypatch.setattr(ev, "_QUERY_CHUNK", 7)
    assert ev.evaluate_market(*args) == whole


def test_distance_matrix_cosine_and_euclidean() -> None:
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(4, 8)), rng.normal(size=(5, 8))
    cos = compute_distance_matrix(q, g, "cosine")
    euc = compute_distance_matrix(q, g, "euclidean")
    for i in range(4):
        for j in range(5):
            expected_cos = 1 - q[i] @ g[j] / (np.linalg.norm(q[i]) * np.linalg.norm(g[j]))
            assert cos[i, j] == pytest.approx(expected_cos, abs=1e-9)
            assert euc[i, j] == pytest.approx(np.linalg.norm(q[i] - g[j]), abs=1e-9)
    assert compute_distance_matrix(q, q, "euclidean").diagonal() == pytest.approx(np.zeros(4), abs=1e-6)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_distance_matrix(q, g, "manhattan")  # type: ignore[arg-type]


def test_soccernet_accepts_tuple_group_labels() -> None:
    distmat, q_pids, g_pids, q_act, g_act = _random_soccernet(seed=11)
    base = evaluate_soccernet(distmat, q_pids, g_pids, q_act, g_act)
    # (game, action) tuples, once as lists of tuples and once as the 2-D object array numpy builds from them.
    q_tup = [("game-1", a) for a in q_act]
    g_tup = [("game-1", a) for a in g_act]
    assert evaluate_soccernet(distmat, q_pids, g_pids, q_tup, g_tup) == base
    q_arr, g_arr = np.array(q_tup, dtype=object), np.array(g_tup, dtype=object)
    assert q_arr.ndim == 2
    assert evaluate_soccernet(distmat, q_pids, g_pids, q_arr, g_arr) == base
