"""Tracklet queries for POST /query: the optional ``tracklets`` form field (one value per file, like ``labels``
in POST /gallery) groups crops into one pooled query per tracklet, answered in order of first appearance.

    groups = parse_tracklets(["a", "b", "a"], count=3)   # [QueryGroup("a", (0, 2)), QueryGroup("b", (1,))]
    queries = pool_queries(embeddings, groups)            # (3, D) crops -> (2, D) unit queries

Without the field every file is its own group (tracklet None), so the answer is one result per file exactly as
before. The batcher never sees tracklets: it embeds the request's crops like any other; pooling happens after.
Pooling and per-label scoring are in model/pooling.py (shared with calibration and benchmarks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.pooling import DEFAULT_LABEL_RULE, DEFAULT_POOLING, label_scores, pool_groups
from service.core.errors import ServiceError
from service.gallery import ScoredItem

logger = logging.getLogger(__name__)

MAX_TRACKLET_LENGTH = 128


@dataclass(frozen=True)
class QueryGroup:
    """One query of a request: the indices of its files (upload order) and its tracklet value (None: plain crop)."""

    tracklet: str | None
    indices: tuple[int, ...]

    @property
    def crops(self) -> int:
        return len(self.indices)


def parse_tracklets(raw: list[str] | None, count: int) -> list[QueryGroup]:
    """Validate the ``tracklets`` field and group the file indices, in order of first appearance.

    Args:
        raw: the form values (None or empty when the field was not sent).
        count: number of uploaded files.

    Returns:
        One QueryGroup per tracklet (or per file when ``raw`` is empty).

    Raises:
        ServiceError 422 ``tracklet_count_mismatch`` or ``invalid_tracklet``.
    """
    if not raw:
        return [QueryGroup(None, (i,)) for i in range(count)]
    if len(raw) != count:
        raise ServiceError(
            422,
            "tracklet_count_mismatch",
            f"{len(raw)} tracklets for {count} files: send one `tracklets` field per file (or none)",
        )
    members: dict[str, list[int]] = {}
    for i, value in enumerate(raw):
        if not value.strip() or len(value) > MAX_TRACKLET_LENGTH:
            raise ServiceError(
                422,
                "invalid_tracklet",
                f"tracklet #{i} must be 1 to {MAX_TRACKLET_LENGTH} characters and not blank "
                "(give a single crop its own value)",
            )
        members.setdefault(value, []).append(i)
    return [QueryGroup(value, tuple(indices)) for value, indices in members.items()]


def pool_queries(embeddings: np.ndarray, groups: list[QueryGroup], method: str = DEFAULT_POOLING) -> np.ndarray:
    """(Q, D) crop embeddings -> (T, D) float32 unit queries, one per group (a 1-crop group is its crop)."""
    if all(group.crops == 1 for group in groups):
        return np.ascontiguousarray(embeddings[[group.indices[0] for group in groups]], dtype=np.float32)
    return pool_groups(embeddings, [group.indices for group in groups], method)


def rank_matches(
    hits: list[ScoredItem], threshold: float, group: QueryGroup, rule: str = DEFAULT_LABEL_RULE
) -> dict[str, Any]:
    """One result (the JSON object of schemas.QueryResult, built directly: the query path skips pydantic) from a
    query's hits, best first: candidates per label by ``rule``, and ``match`` = the best candidate when its score
    reaches ``threshold`` (with the ``max`` rule: the top match's label)."""
    labels = [hit.item.label for hit in hits]
    scored = label_scores([hit.score for hit in hits], labels, rule)
    top = scored[0] if scored else None
    return {
        "matches": [{"id": hit.item.id, "label": hit.item.label, "score": hit.score} for hit in hits],
        "candidates": [{"label": label, "score": score} for label, score in scored],
        "match": top[0] if top is not None and top[1] >= threshold else None,
        "tracklet": group.tracklet,
        "crops": group.crops,
        "threshold": threshold,
    }
