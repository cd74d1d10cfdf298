"""Ranking files in the format of the official SoccerNet re-identification challenge, written and read back.

    ranking = ranking_results(split.query, split.gallery, distmat)     # {"<query bbox_idx>": [gallery bbox_idx]}
    write_ranking(ranking, out / "ranking_results_challenge.json")        # upload this file
    check_ranking(read_ranking(path), split.query, split.gallery)         # what the server checks before scoring

The format (as the SoccerNet package's ``SoccerNet.Evaluation.ReIdentification.evaluate`` reads it): one JSON
object; each key is a query's bbox_idx written as a string, each value the list of the bbox_idx (JSON integers)
of *every* gallery crop of the query's action, exactly once each, closest first. bbox_idx and action_idx are the
first two fields of the crop's file name; query and gallery crops are numbered separately. Every query must have
a ranking. Labelled splits are scored from the same file against a ground-truth mapping
``{"query": {"<bbox_idx>": {"action_idx", "person_uid", ...}}, "gallery": {...}}``: ``score_ranking`` does it
here (mAP and rank-1 over all queries), so a file that passes here passes the server's checks.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data.readers import Sample, parse_soccernet_name

logger = logging.getLogger(__name__)


def ranking_filename(split: str) -> str:
    return f"ranking_results_{split}.json"


def _ids(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """(bbox_idx (N,), action_idx (N,)) from the crops' file names."""
    names = [parse_soccernet_name(Path(s.path).name) for s in samples]
    return np.array([n.bbox_idx for n in names]), np.array([n.action_idx for n in names])


def ranking_results(query: Sequence[Sample], gallery: Sequence[Sample], distmat: np.ndarray) -> dict[str, list[int]]:
    """Per query (bbox_idx as text) the bbox_idx of every gallery crop of its action, ascending ``distmat``.

    distmat: (num_q, num_g) distances, smaller = closer (entries across actions are ignored).
    """
    q_bbox, q_action = _ids(query)
    g_bbox, g_action = _ids(gallery)
    if distmat.shape != (len(query), len(gallery)):
        raise ValueError(f"distmat is {distmat.shape}, expected ({len(query)}, {len(gallery)})")
    for name, ids in (("query", q_bbox), ("gallery", g_bbox)):
        if len(set(ids.tolist())) != len(ids):
            raise ValueError(f"{name} bbox_idx values repeat: not one SoccerNet split's {name} list")
    by_action: dict[int, np.ndarray] = {}
    for action in np.unique(g_action):
        by_action[int(action)] = np.flatnonzero(g_action == action)
    ranking: dict[str, list[int]] = {}
    for i in range(len(query)):
        candidates = by_action.get(int(q_action[i]), np.empty(0, dtype=np.int64))
        if len(candidates) == 0:
            raise ValueError(f"query bbox_idx {q_bbox[i]} (action {q_action[i]}) has no gallery crop in its action")
        order = candidates[np.argsort(distmat[i, candidates], kind="stable")]
        ranking[str(int(q_bbox[i]))] = [int(b) for b in g_bbox[order]]
    return ranking


def write_ranking(ranking: dict[str, list[int]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ranking, sort_keys=True))
    logger.info("wrote rankings of %d queries to %s", len(ranking), path)
    return path


def read_ranking(path: str | Path) -> dict[str, list[int]]:
    """Read a ranking file, checking its shape: an object of string keys to lists of integers."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a ranking file holds one JSON object, got {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{path}: the ranking of query {key!r} must be a list of integers")
    return data


def groundtruth(query: Sequence[Sample], gallery: Sequence[Sample]) -> dict[str, dict[str, dict[str, Any]]]:
    """The ground-truth mapping of a labelled split, keyed like the ranking file (bbox_idx as text)."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for part, samples in (("query", query), ("gallery", gallery)):
        entries = {}
        for sample in samples:
            name = parse_soccernet_name(Path(sample.path).name)
            if name.person_uid is None:
                raise ValueError(f"{sample.path}: unlabelled crop, no ground truth")
            entries[str(name.bbox_idx)] = {"bbox_idx": name.bbox_idx, "action_idx": name.action_idx,
                                           "person_uid": name.person_uid}
        result[part] = entries
    return result


def check_ranking(ranking: dict[str, list[int]], query: Sequence[Sample], gallery: Sequence[Sample]) -> None:
    """Raise ValueError unless every query is ranked, against every gallery crop of its action exactly once."""
    q_bbox, q_action = _ids(query)
    g_bbox, g_action = _ids(gallery)
    action_of = {int(b): int(a) for b, a in zip(g_bbox, g_action, strict=True)}
    members: dict[int, set[int]] = defaultdict(set)
    for b, a in action_of.items():
        members[a].add(b)
    expected = {str(int(b)) for b in q_bbox}
    if set(ranking) != expected:
        missing, extra = sorted(expected - set(ranking)), sorted(set(ranking) - expected)
        raise ValueError(f"ranked queries differ from the split's: missing {missing[:5]}, unknown {extra[:5]}")
    for b, a in zip(q_bbox, q_action, strict=True):
        ranked = ranking[str(int(b))]
        if len(set(ranked)) != len(ranked):
            raise ValueError(f"query {b}: a gallery crop is ranked more than once")
        others = [g for g in ranked if action_of.get(g) != int(a)]
        if others:
            raise ValueError(f"query {b} (action {a}): gallery crops {others[:5]} are not of its action")
        if set(ranked) != members[int(a)]:
            raise ValueError(f"query {b} (action {a}): gallery crops {sorted(members[int(a)] - set(ranked))[:5]} "
                             "of its action are not ranked")


def score_ranking(ranking: dict[str, list[int]], truth: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """mAP and rank-1 of a ranking file against a ground-truth mapping, averaged over all queries."""
    gallery = truth["gallery"]
    ap, top1 = [], []
    for key, entry in truth["query"].items():
        if key not in ranking:
            raise ValueError(f"no ranking for query {key}")
        hits = np.array([gallery[str(g)]["person_uid"] == entry["person_uid"] for g in ranking[key]])
        if not hits.any():
            raise ValueError(f"query {key}: its identity is not among its ranked gallery crops")
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        ap.append(float((precision * hits).sum() / hits.sum()))
        top1.append(float(hits[0]))
    return {"mAP": float(np.mean(ap)), "rank1": float(np.mean(top1)), "num_queries": len(ap)}
