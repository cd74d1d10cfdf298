"""Our evaluation and re-ranking against the implementations users trust, to 1e-6.

Oracles (test-only, the ``oracles`` extra; see pyproject.toml):

- ``SoccerNet.Evaluation.ReIdentification.evaluate``: the official SoccerNet re-identification scorer (JSON
  ground truth + JSON rankings -> mAP, rank-1).
- torchreid's ``eval_market1501`` (``torchreid/reid/metrics/rank.py``) and ``re_ranking``
  (``torchreid/reid/utils/rerank.py``, the k-reciprocal re-ranking of Zhong et al. as published with torchreid).
  Both files are loaded straight from the installed package: ``import torchreid`` itself pulls in every model
  and data set (opencv, gdown, scipy, ...), which these two numpy-only functions do not need.

Ties: torchreid sorts with ``np.argsort``'s default kind, whose order among equal values depends on the
numpy build (SIMD sorts are not stable). Our functions break ties by gallery index. On tie-heavy inputs the
oracle therefore runs with its ``np.argsort`` pinned to the stable kind (its code is otherwise unchanged), so
both sides follow the same documented tie rule; on random inputs (no ties) it runs untouched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.evaluation.metrics import compute_distance_matrix, evaluate_market, evaluate_soccernet
from training.evaluation.reranking import k_reciprocal_rerank

TOL = 1e-6


@contextlib.contextmanager
def _no_torchreid_package() -> Iterator[None]:
    """Make ``import torchreid...`` fail fast (ImportError) while a standalone torchreid file is executed."""
    saved = sys.modules.get("torchreid")
    sys.modules["torchreid"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["torchreid"]
        else:
            sys.modules["torchreid"] = saved


def _torchreid_file(relative: str, name: str) -> types.ModuleType:
    spec = importlib.util.find_spec("torchreid")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchreid is not installed (pip install torchreid==0.2.5, the 'oracles' extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    file_spec = importlib.util.spec_from_file_location(name, path)
    assert file_spec is not None and file_spec.loader is not None, path
    module = importlib.util.module_from_spec(file_spec)
    with _no_torchreid_package(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Cython evaluation is unavailable": the python path is the oracle
        file_spec.loader.exec_module(module)
    return module


def _with_stable_argsort(module: types.ModuleType) -> types.ModuleType:
    """A copy of an oracle module whose ``np.argsort`` breaks ties by index (kind="stable")."""
    shim = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    shim.argsort = lambda a, axis=-1, kind=None, order=None: np.argsort(a, axis=axis, kind="stable")
    pinned = types.ModuleType(module.__name__ + "_stable")
    pinned.__dict__.update({k: v for k, v in module.__dict__.items() if not k.startswith("__")})
    pinned.np = shim
    for value in list(pinned.__dict__.values()):
        if isinstance(value, types.FunctionType):
            setattr(
                pinned,
                value.__name__,
                types.FunctionType(
                    value.__code__, pinned.__dict__, value.__name__, value.__defaults__, value.__closure__
                ),
            )
    return pinned


@pytest.fixture(scope="module")
def torchreid_rank() -> types.ModuleType:
    return _torchreid_file("reid/metrics/rank.py", "torchreid_rank_oracle")


@pytest.fixture(scope="module")
def torchreid_rerank() -> types.ModuleType:
    return _torchreid_file("reid/utils/rerank.py", "torchreid_rerank_oracle")


@pytest.fixture(scope="module")
def soccernet_evaluate() -> Any:
    module = pytest.importorskip(
        "SoccerNet.Evaluation.ReIdentification",
        reason="SoccerNet is not installed (pip install --no-deps SoccerNet==0.2.0; see pyproject's 'oracles')",
    )
    return module.evaluate


def _distances(rng: np.random.Generator, shape: tuple[int, int], ties: bool) -> np.ndarray:
    """Random distances; tie-heavy ones take only four values, so most rankings have ties across identities."""
    if ties:
        return rng.integers(0, 4, size=shape).astype(np.float64) / 4.0
    return rng.random(shape)


# ---------------------------------------------------------------------------------------------------- Market
def _market_case(seed: int, ties: bool) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    num_q, num_g, num_ids = 25, 70, 8
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    return _distances(rng, (num_q, num_g), ties), q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("ties", [False, True], ids=["random", "tie-heavy"])
@pytest.mark.parametrize("seed", range(4))
def test_market_protocol_equals_torchreid_eval_market1501(
    torchreid_rank: types.ModuleType, seed: int, ties: bool
) -> None:
    distmat, q_pids, g_pids, q_cams, g_cams = _market_case(seed, ties)
    oracle = _with_stable_argsort(torchreid_rank) if ties else torchreid_rank
    max_rank = 20
    with contextlib.redirect_stdout(io.StringIO()):
        their_cmc, their_map = oracle.eval_market1501(distmat, q_pids, g_pids, q_cams, g_cams, max_rank)
    ours = evaluate_market(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    assert ours["mAP"] == pytest.approx(float(their_map), abs=TOL)
    np.testing.assert_allclose(ours["cmc"], their_cmc, atol=TOL)
    assert ours["rank1"] == pytest.approx(float(their_cmc[0]), abs=TOL)
    if ties:
        # The inputs do exercise ties that change the answer: a reversed tie order gives another mAP.
        reversed_ties = evaluate_market(distmat[:, ::-1], q_pids, g_pids[::-1], q_cams, g_cams[::-1])
        assert abs(reversed_ties["mAP"] - ours["mAP"]) > TOL


# ------------------------------------------------------------------------------------------------- SoccerNet
def _soccernet_case(seed: int, ties: bool) -> tuple[np.ndarray, ...]:
    """Four actions; per action 3-6 players with a query and 1-3 gallery crops, plus unmatched gallery crops."""
    rng = np.random.default_rng(seed)
    q_pids: list[int] = []
    q_actions: list[int] = []
    g_pids: list[int] = []
    g_actions: list[int] = []
    for action in range(4):
        players = int(rng.integers(3, 7))
        for pid in range(players):  # identities repeat across actions: they are only unique within one
            q_pids.append(pid)
            q_actions.append(action)
            for _ in range(int(rng.integers(1, 4))):
                g_pids.append(pid)
                g_actions.append(action)
        for extra in range(int(rng.integers(0, 3))):
            g_pids.append(players + extra)
            g_actions.append(action)
    distmat = _distances(rng, (len(q_pids), len(g_pids)), ties)
    return distmat, np.array(q_pids), np.array(g_pids), np.array(q_actions), np.array(g_actions)


def _soccernet_files(
    folder: Path, distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_act: np.ndarray, g_act: np.ndarray
) -> tuple[Path, Path]:
    """The official scorer's inputs: ground truth and per-query rankings (same action, ties by gallery index)."""
    truth = {
        "query": {
            str(q): {"person_uid": int(q_pids[q]), "action_idx": int(q_act[q]), "bbox_idx": q}
            for q in range(len(q_pids))
        },
        "gallery": {
            str(g): {"person_uid": int(g_pids[g]), "action_idx": int(g_act[g]), "bbox_idx": g}
            for g in range(len(g_pids))
        },
    }
    rankings = {}
    for q in range(len(q_pids)):
        same_action = np.flatnonzero(g_act == q_act[q])
        order = same_action[np.argsort(distmat[q, same_action], kind="stable")]
        rankings[str(q)] = [int(g) for g in order]
    truth_path, ranking_path = folder / "truth.json", folder / "ranking.json"
    truth_path.write_text(json.dumps(truth))
    ranking_path.write_text(json.dumps(rankings))
    return truth_path, ranking_path


@pytest.mark.parametrize("ties", [False, True], ids=["random", "tie-heavy"])
@pytest.mark.parametrize("seed", range(4))
def test_soccernet_protocol_equals_official_scorer(
    soccernet_evaluate: Any, tmp_path: Path, seed: int, ties: bool
) -> None:
    distmat, q_pids, g_pids, q_act, g_act = _soccernet_case(seed, ties)
    truth, ranking = _soccernet_files(tmp_path, distmat, q_pids, g_pids, q_act, g_act)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = soccernet_evaluate(str(truth), str(ranking))
    ours = evaluate_soccernet(distmat, q_pids, g_pids, q_act, g_act)
    assert ours["num_queries"] == len(q_pids)
    assert ours["mAP"] == pytest.approx(float(theirs["mAP"]), abs=TOL)
    assert ours["rank1"] == pytest.approx(float(theirs["rank-1"]), abs=TOL)


# ------------------------------------------------------------------------------------------------ re-ranking
def _rerank_case(seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    num_q, num_g = 8, 30
    if ties:
        # Integer points on a small grid: many exactly equal distances, in float32 as in float64.
        feats = rng.integers(0, 3, size=(num_q + num_g, 3)).astype(np.float64)
    else:
        feats = rng.normal(size=(num_q + num_g, 6))
    q, g = feats[:num_q], feats[num_q:]
    return (
        compute_distance_matrix(q, g, "euclidean"),
        compute_distance_matrix(q, q, "euclidean"),
        compute_distance_matrix(g, g, "euclidean"),
    )


@pytest.mark.parametrize("ties", [False, True], ids=["random", "tie-heavy"])
@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (6, 3, 0.3), (5, 1, 0.5), (3, 2, 0.0)])
@pytest.mark.parametrize("seed", range(2))
def test_k_reciprocal_equals_torchreid_re_ranking(
    torchreid_rerank: types.ModuleType, seed: int, k1: int, k2: int, lam: float, ties: bool
) -> None:
    q_g, q_q, g_g = _rerank_case(seed, ties)
    oracle = _with_stable_argsort(torchreid_rerank) if ties else torchreid_rerank
    theirs = oracle.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    ours = k_reciprocal_rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
