"""Calibration of the cosine-similarity threshold under which the service answers "no match".

On a validation split that contains distractor queries (identities absent from the gallery)::

    scores, correct, has_match = top1_from_embeddings(q_emb, q_pids, g_emb, g_pids)
    calib = calibrate_threshold(scores, correct, has_match)
    metadata["threshold"] = calib.threshold; metadata["metrics"]["calibration"] = calib.as_dict()

Decision rule: a query is *accepted* when its top-1 cosine score >= threshold. An accept is *correct* when
the query's identity is in the gallery and the top-1 item has it. Then

- precision = correct accepts / accepts (0 when nothing is accepted),
- recall    = correct accepts / queries whose identity is in the gallery,
- f1        = harmonic mean of the two,
- accuracy  = (correct accepts + rejected distractors) / all queries; rejecting a query whose identity *is*
  in the gallery counts as an error even when its top-1 was wrong, because a right answer was available.

The threshold maximises F1 over every distinct cut of the sorted scores. Any threshold strictly between two
neighbouring distinct scores gives the same decisions, so the midpoint of the two is returned (robust to
small score drift); the cut that accepts every query returns the lowest score itself. When several cuts
reach the same F1, the highest threshold (fewest accepts) wins; when no cut gives a correct accept, the
threshold rejects every query.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from training.evaluation import group_labels

logger = logging.getLogger(__name__)

_CHUNK = 1024


@dataclass(frozen=True)
class Calibration:
    """A calibrated acceptance threshold and the validation metrics measured at it (fractions in [0, 1])."""

    threshold: float
    precision: float
    recall: float
    f1: float
    accuracy: float
    num_queries: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain JSON-ready dict, e.g. for the checkpoint metadata."""
        return asdict(self)


def calibrate_threshold(
    top1_scores: np.ndarray, top1_correct: np.ndarray, query_has_match: np.ndarray
) -> Calibration:
    """Choose the cosine threshold that maximises F1 of correct top-1 accepts (see module docstring).

    Args:
        top1_scores: (N,) top-1 cosine similarity of each validation query (larger = more similar).
        top1_correct: (N,) bool, the top-1 gallery item has the query's identity.
        query_has_match: (N,) bool, the query's identity exists in the gallery (False for distractors).

    Returns:
        Calibration with the chosen threshold and precision/recall/f1/accuracy at it.
    """
    scores = np.asarray(top1_scores, dtype=np.float64).ravel()
    correct = np.asarray(top1_correct, dtype=bool).ravel()
    has_match = np.asarray(query_has_match, dtype=bool).ravel()
    n = scores.size
    if n == 0:
        raise ValueError("cannot calibrate a threshold on zero queries")
    if correct.size != n or has_match.size != n:
        raise ValueError(
            f"length mismatch: {n} scores, {correct.size} correct flags, {has_match.size} match flags"
        )
    # -inf is allowed: it marks a query with nothing to compare against, which no finite threshold accepts.
    if np.isnan(scores).any() or (scores == np.inf).any():
        raise ValueError("top-1 scores must be finite or -inf")
    good = correct & has_match
    num_pos = int(has_match.sum())
    num_distractors = n - num_pos

    order = np.argsort(-scores, kind="stable")
    desc = scores[order]
    # Cut after position j accepts the j+1 highest scores; only boundaries between distinct scores are
    # reachable.
    cut = np.flatnonzero(np.append(desc[:-1] > desc[1:], True))
    accepts = cut + 1
    correct_accepts = np.cumsum(good[order])[cut]
    accepted_distractors = np.cumsum(~has_match[order])[cut]
    upper, lower = desc[cut[:-1]], desc[cut[:-1] + 1]
    # A midpoint with a -inf neighbour would be -inf; the lowest accepted score gives the same decisions.
    with np.errstate(invalid="ignore"):
        midpoints = np.where(np.isfinite(lower), (upper + lower) / 2.0, upper)
    thresholds = np.append(midpoints, desc[-1])

    # The "reject everything" cut, so that a useless model gets a threshold that never answers.
    accepts = np.append(0, accepts)
    correct_accepts = np.append(0, correct_accepts)
    accepted_distractors = np.append(0, accepted_distractors)
    thresholds = np.append(np.nextafter(desc[0], np.inf), thresholds)

    precision = np.divide(correct_accepts, accepts, out=np.zeros(accepts.size), where=accepts > 0)
    recall = correct_accepts / num_pos if num_pos else np.zeros(accepts.size)
    # F1 = 2PR / (P + R) rewritten on counts, so that equal F1 values are bit-identical and ties resolve
    # by the documented rule rather than by rounding.
    denom = accepts + num_pos
    f1 = np.divide(2.0 * correct_accepts, denom, out=np.zeros(accepts.size), where=denom > 0)
    # argmax returns the first maximum; candidates run from the highest threshold down, so ties go to it.
    best = int(np.argmax(f1))
    rejected_distractors = num_distractors - accepted_distractors[best]
    calib = Calibration(
        threshold=float(thresholds[best]),
        precision=float(precision[best]),
        recall=float(recall[best]),
        f1=float(f1[best]),
        accuracy=float((correct_accepts[best] + rejected_distractors) / n),
        num_queries=n,
    )
    if calib.f1 == 0.0:
        logger.warning("no threshold gives a correct accept on %d queries; this one rejects all", n)
    logger.info("calibrated threshold %s", calib)
    return calib


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def top1_from_embeddings(
    q_emb: np.ndarray,
    q_pids: np.ndarray,
    g_emb: np.ndarray,
    g_pids: np.ndarray,
    q_groups: Sequence[Hashable] | np.ndarray | None = None,
    g_groups: Sequence[Hashable] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-1 cosine score, correctness and match existence of each query, the inputs of
    ``calibrate_threshold``.

    Args:
        q_emb: (num_q, D) query embeddings (normalised here).
        q_pids: (num_q,) query identities.
        g_emb: (num_g, D) gallery embeddings.
        g_pids: (num_g,) gallery identities.
        q_groups, g_groups: optional (num_q,), (num_g,) group labels (SoccerNet actions, where identities
        are only
            unique within an action): a query then only searches, and only has a match in, its own group.

    Returns:
        scores (num_q,) float64 top-1 cosine similarity (-inf when the query's group has no gallery item),
        correct (num_q,) bool, has_match (num_q,) bool. Ties go to the lowest gallery index.
    """
    q = _normalise(q_emb)
    g = _normalise(g_emb)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"expected (num_q, D) and (num_g, D) embeddings, got {q.shape} and {g.shape}")
    if len(q_pids) != len(q) or len(g_pids) != len(g):
        raise ValueError("one pid per embedding row is required")
    if (q_groups is None) != (g_groups is None):
        raise ValueError("give both q_groups and g_groups, or neither")
    if g.shape[0] == 0:
        raise ValueError("the gallery is empty")
    qg = gg = None
    if q_groups is not None and g_groups is not None:
        # Integer codes make the (num_q, num_g) same-group test a plain array comparison for any label type.
        codes: dict[Hashable, int] = {}
        qg = np.array([codes.setdefault(k, len(codes)) for k in group_labels(q_groups)], dtype=np.int64)
        gg = np.array([codes.setdefault(k, len(codes)) for k in group_labels(g_groups)], dtype=np.int64)
        if len(qg) != len(q) or len(gg) != len(g):
            raise ValueError("one group label per embedding row is required")

    scores = np.empty(len(q))
    correct = np.empty(len(q), dtype=bool)
    has_match = np.empty(len(q), dtype=bool)
    for start in range(0, len(q), _CHUNK):
        rows = slice(start, start + _CHUNK)
        sim = q[rows] @ g.T
        same_pid = q_pids[rows, None] == g_pids[None, :]
        if qg is not None and gg is not None:
            same_group = qg[rows, None] == gg[None, :]
            sim = np.where(same_group, sim, -np.inf)
            same_pid &= same_group
        best = np.argmax(sim, axis=1)
        scores[rows] = sim[np.arange(sim.shape[0]), best]
        correct[rows] = same_pid[np.arange(sim.shape[0]), best] & np.isfinite(scores[rows])
        has_match[rows] = same_pid.any(axis=1)
    return scores, correct, has_match


# ------------------------------------------------------------------ precision-targeted calibration


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold and what it does on the calibration queries (fractions in [0, 1]).

    precision: correct matches / returned matches; recall: correct matches / queries whose person is in
    the gallery; absent_false_match: share of absent-person queries that got a (necessarily wrong) match;
    answered: share of all queries that got a match.
    """

    threshold: float
    precision: float
    recall: float
    absent_false_match: float
    answered: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PrecisionCalibration:
    """Result of ``calibrate_for_precision``: the chosen point, or None with the reason when none qualifies.

    ``best_precision`` is the highest precision any threshold reaching ``min_recall`` gives (what the
    target would have to be lowered to); ``curve`` holds the best point for a few other precision targets.
    """

    target_precision: float
    min_recall: float
    chosen: OperatingPoint | None
    best_precision: OperatingPoint | None
    curve: dict[str, OperatingPoint | None]
    num_queries: int
    num_absent: int

    @property
    def feasible(self) -> bool:
        return self.chosen is not None

    def explain(self) -> str:
        """One human sentence: what was chosen, or why nothing was and what other targets would give."""
        if self.chosen is not None:
            c = self.chosen
            return (
                f"threshold {c.threshold:.4f}: precision {c.precision:.3f} (target {self.target_precision}), "
                f"recall {c.recall:.3f}, {c.absent_false_match:.1%} of absent people get a wrong match"
            )
        lines = [f"no threshold reaches precision {self.target_precision} with recall >= {self.min_recall}"]
        if self.best_precision is not None:
            b = self.best_precision
            lines.append(
                f"best reachable: precision {b.precision:.3f} at recall {b.recall:.3f} (threshold {b.threshold:.4f})"
            )
        for target, point in self.curve.items():
            if point is None:
                lines.append(f"  precision >= {target}: unreachable")
            else:
                lines.append(
                    f"  precision >= {target}: threshold {point.threshold:.4f}, recall {point.recall:.3f}, "
                    f"absent people wrongly matched {point.absent_false_match:.1%}"
                )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "target_precision": self.target_precision,
            "min_recall": self.min_recall,
            "chosen": None if self.chosen is None else self.chosen.as_dict(),
            "best_precision": None if self.best_precision is None else self.best_precision.as_dict(),
            "curve": {k: None if v is None else v.as_dict() for k, v in self.curve.items()},
            "num_queries": self.num_queries,
            "num_absent": self.num_absent,
        }


CURVE_TARGETS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def operating_points(
    top1_scores: np.ndarray, top1_correct: np.ndarray, query_has_match: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct decision a threshold can make on these queries, from "reject all" down to "accept all".

    Args: as ``calibrate_threshold``: (N,) scores, (N,) bool correct top-1, (N,) bool person in gallery.

    Returns:
        thresholds, precision, recall, absent_false_match, answered, correct_accepts: (C,) arrays, C = number
        of distinct scores + 1, in order of decreasing threshold. Thresholds are midpoints between
        neighbouring distinct scores (the first one sits just above the highest score: rejects all).
    """
    scores = np.asarray(top1_scores, dtype=np.float64).ravel()
    correct = np.asarray(top1_correct, dtype=bool).ravel()
    has_match = np.asarray(query_has_match, dtype=bool).ravel()
    n = scores.size
    if n == 0:
        raise ValueError("cannot calibrate a threshold on zero queries")
    if correct.size != n or has_match.size != n:
        raise ValueError(f"length mismatch: {n} scores, {correct.size} correct flags, {has_match.size} match flags")
    if np.isnan(scores).any() or (scores == np.inf).any():
        raise ValueError("top-1 scores must be finite or -inf")
    good = correct & has_match
    num_pos = int(has_match.sum())
    num_absent = n - num_pos
    order = np.argsort(-scores, kind="stable")
    desc = scores[order]
    cut = np.flatnonzero(np.append(desc[:-1] > desc[1:], True))
    upper, lower = desc[cut[:-1]], desc[cut[:-1] + 1]
    with np.errstate(invalid="ignore"):
        midpoints = np.where(np.isfinite(lower), (upper + lower) / 2.0, upper)
    thresholds = np.concatenate([[np.nextafter(desc[0], np.inf)], midpoints, [desc[-1]]])
    accepts = np.append(0, cut + 1)
    correct_accepts = np.append(0, np.cumsum(good[order])[cut])
    absent_accepts = np.append(0, np.cumsum(~has_match[order])[cut])
    precision = np.divide(correct_accepts, accepts, out=np.zeros(accepts.size), where=accepts > 0)
    recall = correct_accepts / num_pos if num_pos else np.zeros(accepts.size)
    absent_rate = absent_accepts / num_absent if num_absent else np.zeros(accepts.size)
    return thresholds, precision, recall, absent_rate, accepts / n, correct_accepts


def _best_at(points: tuple[np.ndarray, ...], target: float, min_recall: float) -> OperatingPoint | None:
    thresholds, precision, recall, absent_rate, answered, correct_accepts = points
    ok = (precision >= target) & (recall >= min_recall) & (correct_accepts > 0)
    if not ok.any():
        return None
    # Highest recall; among equal recall the first (= highest threshold, fewest wrong answers).
    best = int(np.argmax(np.where(ok, correct_accepts, -1)))
    return OperatingPoint(
        float(thresholds[best]),
        float(precision[best]),
        float(recall[best]),
        float(absent_rate[best]),
        float(answered[best]),
    )


def operating_point_at(
    threshold: float, top1_scores: np.ndarray, top1_correct: np.ndarray, query_has_match: np.ndarray
) -> OperatingPoint:
    """What a given threshold does on these queries (e.g. the default one, before calibration).

    Args: ``threshold`` (answer when score >= threshold) and the (N,) arrays of ``calibrate_threshold``.
    """
    scores = np.asarray(top1_scores, dtype=np.float64).ravel()
    correct = np.asarray(top1_correct, dtype=bool).ravel()
    has_match = np.asarray(query_has_match, dtype=bool).ravel()
    answered = scores >= threshold
    good = int((answered & correct & has_match).sum())
    num_absent = int((~has_match).sum())
    return OperatingPoint(
        threshold=float(threshold),
        precision=good / int(answered.sum()) if answered.any() else 0.0,
        recall=good / int(has_match.sum()) if has_match.any() else 0.0,
        absent_false_match=int((answered & ~has_match).sum()) / num_absent if num_absent else 0.0,
        answered=float(answered.mean()) if scores.size else 0.0,
    )


def calibrate_for_precision(
    top1_scores: np.ndarray,
    top1_correct: np.ndarray,
    query_has_match: np.ndarray,
    target_precision: float = 0.9,
    min_recall: float = 0.05,
) -> PrecisionCalibration:
    """The threshold with the highest share of correct matches (recall) among those whose returned matches
    are at least ``target_precision`` correct; never "reject everything".

    A threshold qualifies when precision >= target_precision and recall >= min_recall (a threshold that
    answers a handful of queries is not a useful operating point, and its precision is a noisy estimate).
    When none qualifies, ``chosen`` is None and ``explain()`` says what the best reachable precision is and
    what lower targets would give.

    Args: (N,) top-1 scores, (N,) bool correct top-1, (N,) bool person in gallery (see calibrate_threshold).
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    if not 0.0 <= min_recall <= 1.0:
        raise ValueError(f"min_recall must be in [0, 1], got {min_recall}")
    points = operating_points(top1_scores, top1_correct, query_has_match)
    thresholds, precision, recall, absent_rate, answered, correct_accepts = points
    chosen = _best_at(points, target_precision, min_recall)
    reach = (recall >= min_recall) & (correct_accepts > 0)
    best_precision = None
    if reach.any():
        # Highest precision; among ties the most recall (the later, lower threshold).
        top = precision[reach].max()
        idx = int(np.flatnonzero(reach & (precision == top))[-1])
        best_precision = OperatingPoint(
            float(thresholds[idx]),
            float(precision[idx]),
            float(recall[idx]),
            float(absent_rate[idx]),
            float(answered[idx]),
        )
    curve = {f"{t:g}": _best_at(points, t, min_recall) for t in CURVE_TARGETS}
    has_match = np.asarray(query_has_match, dtype=bool).ravel()
    result = PrecisionCalibration(
        target_precision=target_precision,
        min_recall=min_recall,
        chosen=chosen,
        best_precision=best_precision,
        curve=curve,
        num_queries=int(has_match.size),
        num_absent=int((~has_match).sum()),
    )
    (logger.info if chosen is not None else logger.warning)("%s", result.explain())
    return result
