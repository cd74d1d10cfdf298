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

Pooled queries (tracklets, see model/pooling.py) score higher than single crops, so one threshold does not fit
every query size. ``calibrate_tracklet_thresholds`` pools validation crops of each identity into tracklets of
several sizes and calibrates one threshold per size bucket (model/thresholds.py), for the checkpoint's
``thresholds`` metadata::

    by_bucket = calibrate_tracklet_thresholds(q_emb, q_pids, g_emb, g_pids)   # {"1": Calibration, "2-4": ...}
    # or, on a split where every query has a match (hides half the identities, groups = SoccerNet actions):
    by_bucket = calibrate_tracklets_with_distractors(q.feats, q.pids, g.feats, g.pids, q_groups=q.groups,
                                                     g_groups=g.groups)
    save_checkpoint(model, path, threshold=by_bucket["1"].threshold,
                    thresholds=bucket_thresholds(by_bucket), metrics={"calibration_by_size": ...})
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from model.pooling import DEFAULT_LABEL_RULE, DEFAULT_POOLING, label_score_matrix, pool_groups
from model.thresholds import DEFAULT_BUCKETS, bucket_of, bucket_range
from training.evaluation.metrics import group_labels

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


@dataclass(frozen=True)
class _Sweep:
    """Every distinct decision a threshold can make, from "reject all" down to "accept all": (C,) arrays,
    C = number of distinct scores + 1, in order of decreasing threshold, plus the query counts."""

    thresholds: np.ndarray
    accepts: np.ndarray
    correct_accepts: np.ndarray
    absent_accepts: np.ndarray
    num_queries: int
    num_pos: int
    num_absent: int

    @property
    def precision(self) -> np.ndarray:
        """(C,) share of accepted queries whose top-1 is right (0 where nothing is accepted)."""
        return np.divide(self.correct_accepts, self.accepts, out=np.zeros(self.accepts.size), where=self.accepts > 0)

    @property
    def recall(self) -> np.ndarray:
        """(C,) share of the queries whose person is in the gallery that are correctly accepted."""
        return self.correct_accepts / self.num_pos if self.num_pos else np.zeros(self.accepts.size)


def _threshold_sweep(top1_scores: np.ndarray, top1_correct: np.ndarray, query_has_match: np.ndarray) -> _Sweep:
    """Counts of accepted, correctly accepted and absent-person queries at each candidate threshold.

    Thresholds are midpoints between neighbouring distinct scores; the first sits just above the highest score
    (rejects all), the last is the lowest score (accepts all).
    """
    scores = np.asarray(top1_scores, dtype=np.float64).ravel()
    correct = np.asarray(top1_correct, dtype=bool).ravel()
    has_match = np.asarray(query_has_match, dtype=bool).ravel()
    n = scores.size
    if n == 0:
        raise ValueError("cannot calibrate a threshold on zero queries")
    if correct.size != n or has_match.size != n:
        raise ValueError(f"length mismatch: {n} scores, {correct.size} correct flags, {has_match.size} match flags")
    # -inf is allowed: it marks a query with nothing to compare against, which no finite threshold accepts.
    if np.isnan(scores).any() or (scores == np.inf).any():
        raise ValueError("top-1 scores must be finite or -inf")
    good = correct & has_match
    num_pos = int(has_match.sum())
    order = np.argsort(-scores, kind="stable")
    desc = scores[order]
    # Cut after position j accepts the j+1 highest scores; only boundaries between distinct scores are reachable.
    cut = np.flatnonzero(np.append(desc[:-1] > desc[1:], True))
    upper, lower = desc[cut[:-1]], desc[cut[:-1] + 1]
    # A midpoint with a -inf neighbour would be -inf; the lowest accepted score gives the same decisions.
    with np.errstate(invalid="ignore"):
        midpoints = np.where(np.isfinite(lower), (upper + lower) / 2.0, upper)
    return _Sweep(
        thresholds=np.concatenate([[np.nextafter(desc[0], np.inf)], midpoints, [desc[-1]]]),
        accepts=np.append(0, cut + 1),
        correct_accepts=np.append(0, np.cumsum(good[order])[cut]),
        absent_accepts=np.append(0, np.cumsum(~has_match[order])[cut]),
        num_queries=n,
        num_pos=num_pos,
        num_absent=n - num_pos,
    )


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
    sweep = _threshold_sweep(top1_scores, top1_correct, query_has_match)
    thresholds, accepts, correct_accepts = sweep.thresholds, sweep.accepts, sweep.correct_accepts
    n, num_pos = sweep.num_queries, sweep.num_pos
    precision, recall = sweep.precision, sweep.recall
    # F1 = 2PR / (P + R) rewritten on counts, so that equal F1 values are bit-identical and ties resolve
    # by the documented rule rather than by rounding.
    denom = accepts + num_pos
    f1 = np.divide(2.0 * correct_accepts, denom, out=np.zeros(accepts.size), where=denom > 0)
    # argmax returns the first maximum; candidates run from the highest threshold down, so ties go to it.
    best = int(np.argmax(f1))
    rejected_distractors = sweep.num_absent - sweep.absent_accepts[best]
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


def sample_tracklets(
    q_pids: np.ndarray,
    size: int,
    rng: np.random.Generator,
    per_identity: int = 1,
    q_groups: Sequence[Hashable] | np.ndarray | None = None,
) -> list[np.ndarray]:
    """Random tracklets of ``size`` crops of one identity (and one group, e.g. a camera or an action).

    Args:
        q_pids: (num_q,) identity of each query crop.
        size: crops per tracklet.
        rng: numpy random generator (seeded by the caller).
        per_identity: tracklets drawn per (identity, group); fewer when the crops do not allow distinct subsets.
        q_groups: optional (num_q,) group of each crop: a tracklet never mixes groups.

    Returns:
        list of (size,) int64 index arrays into the query rows, grouped identity by identity.
    """
    if size < 1 or per_identity < 1:
        raise ValueError(f"size and per_identity must be >= 1, got {size} and {per_identity}")
    pids = np.asarray(q_pids)
    groups = group_labels(q_groups) if q_groups is not None else [None] * len(pids)
    members: dict[tuple[Hashable, Hashable], list[int]] = {}
    for i, (pid, group) in enumerate(zip(pids.tolist(), groups, strict=True)):
        members.setdefault((pid, group), []).append(i)
    tracklets: list[np.ndarray] = []
    for rows in members.values():
        if len(rows) < size:
            continue
        seen: set[tuple[int, ...]] = set()
        for _ in range(per_identity * 4):  # bounded retries: small identities have few distinct subsets
            pick = tuple(sorted(rng.choice(rows, size=size, replace=False).tolist()))
            if pick not in seen:
                seen.add(pick)
                tracklets.append(np.array(pick, dtype=np.int64))
            if len(seen) == per_identity:
                break
    return tracklets


def tracklet_top1(
    q_emb: np.ndarray,
    q_pids: np.ndarray,
    tracklets: Sequence[Sequence[int]],
    g_emb: np.ndarray,
    g_pids: np.ndarray,
    pooling: str = DEFAULT_POOLING,
    label_rule: str = DEFAULT_LABEL_RULE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``top1_from_embeddings`` for pooled queries, scored per label the way the service scores them.

    Args:
        q_emb: (num_q, D) query crop embeddings.
        q_pids: (num_q,) identities; each tracklet must hold one identity.
        tracklets: T index lists into the query rows.
        g_emb: (num_g, D) gallery embeddings; g_pids: (num_g,) their identities (the service's labels).
        pooling, label_rule: see model/pooling.py.

    Returns:
        scores (T,) top-1 label score, correct (T,) bool, has_match (T,) bool.
    """
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    if len(g_emb) == 0:
        raise ValueError("the gallery is empty")
    pids = np.array([q_pids[np.asarray(t)][0] for t in tracklets])
    if any(len(set(q_pids[np.asarray(t)].tolist())) != 1 for t in tracklets):
        raise ValueError("a tracklet mixes identities")
    g = _normalise(g_emb)
    scores = np.empty(len(tracklets))
    correct = np.empty(len(tracklets), dtype=bool)
    for start in range(0, len(tracklets), _CHUNK):
        part = tracklets[start : start + _CHUNK]
        pooled = pool_groups(q_emb, part, pooling).astype(np.float64)
        labels, per_label = label_score_matrix(pooled @ g.T, g_pids, label_rule)
        best = np.argmax(per_label, axis=1)
        rows = slice(start, start + len(part))
        scores[rows] = per_label[np.arange(len(part)), best]
        correct[rows] = labels[best] == pids[rows]
    has_match = np.isin(pids, g_pids)
    return scores, correct, has_match


def calibrate_size_buckets(
    top1_scores: np.ndarray,
    top1_correct: np.ndarray,
    query_has_match: np.ndarray,
    sizes: np.ndarray,
    buckets: Sequence[str] = DEFAULT_BUCKETS,
) -> dict[str, Calibration]:
    """``calibrate_threshold`` separately on the queries of each size bucket.

    Args:
        top1_scores, top1_correct, query_has_match: (N,) as for ``calibrate_threshold``.
        sizes: (N,) crops pooled into each query.
        buckets: bucket keys ("1", "2-4", "5+"; model/thresholds.py).

    Returns:
        {bucket: Calibration} for every bucket that holds at least one query (the others are left out).
    """
    sizes = np.asarray(sizes).ravel()
    for key in buckets:
        bucket_range(key)  # raise early on a malformed key
    keys = np.array([bucket_of(int(n), dict.fromkeys(buckets, 0.0)) for n in sizes], dtype=object)
    out: dict[str, Calibration] = {}
    for key in buckets:
        rows = keys == key
        if rows.any():
            out[key] = calibrate_threshold(
                np.asarray(top1_scores)[rows], np.asarray(top1_correct)[rows], np.asarray(query_has_match)[rows]
            )
        else:
            logger.warning("no validation query falls in size bucket %r; it gets no threshold", key)
    return out


def calibrate_tracklet_thresholds(
    q_emb: np.ndarray,
    q_pids: np.ndarray,
    g_emb: np.ndarray,
    g_pids: np.ndarray,
    *,
    buckets: Sequence[str] = DEFAULT_BUCKETS,
    max_size: int = 8,
    per_identity: int = 2,
    q_groups: Sequence[Hashable] | np.ndarray | None = None,
    seed: int = 0,
    pooling: str = DEFAULT_POOLING,
    label_rule: str = DEFAULT_LABEL_RULE,
) -> dict[str, Calibration]:
    """One threshold per query size bucket, from validation crops pooled into tracklets.

    For each size 1..max_size it draws up to ``per_identity`` tracklets per (identity, group) among the query
    crops (sizes larger than any identity's crop count yield none), scores them as the service does, and
    calibrates each bucket on the tracklets whose size falls in it. The gallery should leave some query
    identities out (distractors), as for ``calibrate_threshold``.

    Args:
        q_emb: (num_q, D) query crop embeddings; q_pids: (num_q,) identities.
        g_emb: (num_g, D) gallery embeddings; g_pids: (num_g,) identities.
        q_groups: optional (num_q,) groups (camera, action): a tracklet stays within one.

    Returns:
        {bucket: Calibration}; ``bucket_thresholds`` turns it into the checkpoint's ``thresholds`` mapping.
    """
    rng = np.random.default_rng(seed)
    tracklets: list[np.ndarray] = []
    for size in range(1, max_size + 1):
        tracklets += sample_tracklets(q_pids, size, rng, per_identity, q_groups)
    if not tracklets:
        raise ValueError("no validation tracklet could be formed")
    scores, correct, has_match = tracklet_top1(q_emb, q_pids, tracklets, g_emb, g_pids, pooling, label_rule)
    sizes = np.array([len(t) for t in tracklets])
    return calibrate_size_buckets(scores, correct, has_match, sizes, buckets)


def bucket_thresholds(calibrations: dict[str, Calibration]) -> dict[str, float]:
    """{bucket: Calibration} -> {bucket: threshold}, the checkpoint's ``thresholds`` metadata."""
    return {key: calib.threshold for key, calib in calibrations.items()}


def calibrate_tracklets_with_distractors(
    q_emb: np.ndarray,
    q_pids: np.ndarray,
    g_emb: np.ndarray,
    g_pids: np.ndarray,
    *,
    q_groups: Sequence[Hashable] | np.ndarray | None = None,
    g_groups: Sequence[Hashable] | np.ndarray | None = None,
    q_tracks: Sequence[Hashable] | np.ndarray | None = None,
    absent_fraction: float = 0.5,
    seed: int = 0,
    buckets: Sequence[str] = DEFAULT_BUCKETS,
    max_size: int = 8,
    per_identity: int = 2,
) -> dict[str, Calibration]:
    """Per-size thresholds on a validation split that has a match for every query (the usual case).

    The gallery crops of a random ``absent_fraction`` of the identities are hidden so that their queries become
    distractors (as ``training.evaluation.evaluate.calibrate_with_distractors`` does for one threshold), then
    ``calibrate_tracklet_thresholds`` runs. With groups (SoccerNet actions), an identity is a (group, pid) pair.

    Args:
        q_emb: (num_q, D), q_pids: (num_q,) validation queries; g_emb: (num_g, D), g_pids: (num_g,) gallery.
        q_groups, g_groups: optional (num_q,), (num_g,) groups in which pids are unique; give both or neither.
        q_tracks: optional (num_q,) key a tracklet must share (e.g. camera id); default: the group.

    Returns:
        {bucket: Calibration}; ``bucket_thresholds`` gives the checkpoint's ``thresholds``.
    """
    if not 0.0 < absent_fraction < 1.0:
        raise ValueError(f"absent_fraction must be in (0, 1), got {absent_fraction}")
    if (q_groups is None) != (g_groups is None):
        raise ValueError("give both q_groups and g_groups, or neither")

    def identities(pids: np.ndarray, groups: Sequence[Hashable] | np.ndarray | None) -> np.ndarray:
        labels = group_labels(groups) if groups is not None else [""] * len(pids)
        return np.array([f"{g}\x1f{p}" for g, p in zip(labels, np.asarray(pids).tolist(), strict=True)])

    q_ids, g_ids = identities(q_pids, q_groups), identities(g_pids, g_groups)
    rng = np.random.default_rng(seed)
    people = sorted(set(q_ids.tolist()))
    absent = {people[i] for i in rng.permutation(len(people))[: round(len(people) * absent_fraction)]}
    keep = np.array([i not in absent for i in g_ids.tolist()], dtype=bool)
    tracks = q_tracks if q_tracks is not None else q_groups
    return calibrate_tracklet_thresholds(
        q_emb,
        q_ids,
        np.asarray(g_emb)[keep],
        g_ids[keep],
        buckets=buckets,
        max_size=max_size,
        per_identity=per_identity,
        q_groups=tracks,
        seed=seed,
    )


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
    sweep = _threshold_sweep(top1_scores, top1_correct, query_has_match)
    accepts = sweep.accepts
    absent_rate = sweep.absent_accepts / sweep.num_absent if sweep.num_absent else np.zeros(accepts.size)
    return (
        sweep.thresholds,
        sweep.precision,
        sweep.recall,
        absent_rate,
        accepts / sweep.num_queries,
        sweep.correct_accepts,
    )


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
