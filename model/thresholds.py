"""No-match thresholds per query size: a pooled tracklet's top score is distributed differently from one crop's,
so a checkpoint may carry one calibrated threshold per bucket of query sizes (crops pooled).

    buckets = parse_buckets({"1": 0.52, "2-4": 0.58, "5+": 0.61})
    threshold_for(3, buckets, default=0.52)   # -> 0.58

A bucket key is ``"N"`` (exactly N crops), ``"A-B"`` (A to B inclusive) or ``"N+"`` (N or more); buckets may
not overlap. A size no bucket covers falls back to the default (the checkpoint's single ``threshold``).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Mapping

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = ("1", "2-4", "5+")
_KEY = re.compile(r"^(\d+)(?:(\+)|-(\d+))?$")


def bucket_range(key: str) -> tuple[int, int | None]:
    """``"2-4"`` -> (2, 4), ``"5+"`` -> (5, None), ``"1"`` -> (1, 1); ValueError for anything else."""
    found = _KEY.match(key.strip()) if isinstance(key, str) else None
    if found is None:
        raise ValueError(f"bad size bucket {key!r}: use 'N', 'A-B' or 'N+' with whole numbers >= 1")
    low = int(found.group(1))
    high = None if found.group(2) else int(found.group(3) or low)
    if low < 1 or (high is not None and high < low):
        raise ValueError(f"bad size bucket {key!r}: sizes start at 1 and A <= B")
    return low, high


def parse_buckets(raw: Mapping[str, object]) -> dict[str, float]:
    """Validate a {bucket key: threshold} mapping (finite thresholds in [-1, 1], no overlapping buckets)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"size-bucket thresholds must be a JSON object, got {type(raw).__name__}")
    parsed: dict[str, float] = {}
    ranges: list[tuple[float, float, str]] = []
    for key, value in raw.items():
        low, high = bucket_range(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"threshold of bucket {key!r} is not a number: {value!r}")
        threshold = float(value)
        if not math.isfinite(threshold) or not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold of bucket {key!r} must be a cosine in [-1, 1], got {threshold}")
        parsed[key.strip()] = threshold
        ranges.append((low, math.inf if high is None else high, key))
    ranges.sort()
    for (_, end, key), (start, _, other) in itertools.pairwise(ranges):
        if start <= end:
            raise ValueError(f"size buckets {key!r} and {other!r} overlap")
    return parsed


def bucket_of(size: int, buckets: Mapping[str, float]) -> str | None:
    """The key of the bucket holding ``size`` crops, or None when no bucket covers it."""
    for key in buckets:
        low, high = bucket_range(key)
        if size >= low and (high is None or size <= high):
            return key
    return None


def threshold_for(size: int, buckets: Mapping[str, float], default: float) -> float:
    """Threshold for a query pooled from ``size`` crops: its bucket's, else ``default``."""
    key = bucket_of(size, buckets)
    return default if key is None else buckets[key]
