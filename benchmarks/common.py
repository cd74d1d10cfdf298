"""Shared helpers for the benchmark scripts: machine description, JSON output, Markdown tables, percentiles.

Benchmarks are scripts, never timed tests. Every script writes one JSON file (``--out``) holding its results and
the machine they came from, and prints a Markdown table that can be pasted into docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# Real data of the project workplace (absent elsewhere: benchmarks fall back or say so).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def ensure_repo_on_path() -> None:
    """Let ``python benchmarks/x.py`` import model/, service/ and tests/support from the repository root."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, load, memory, library versions, GPU (if any)."""
    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cpu_model": _cpu_model(),
        "mem_total_gib": _mem_total_gib(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a hard dependency of the project
        info["torch"] = None
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:  # pragma: no cover
        info["faiss"] = None
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident memory of this process now (MiB), from /proc (0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**2
    except (OSError, ValueError):
        return 0.0


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """{'p50': ..., 'p95': ..., 'p99': ...} of the values (None when empty)."""
    if not values:
        return {f"p{p:g}": None for p in points}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{p:g}": float(np.percentile(arr, p)) for p in points}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get 3 significant figures (or 1 decimal when >= 100)."""

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            if abs(value) >= 100:
                return f"{value:,.0f}"
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(path: Path, payload: dict[str, Any]) -> Path:
    """Write the results JSON (pretty, sorted) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
    logger.info("wrote %s", path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """argparse with the flags every benchmark shares: --quick, --out, --log-level."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / default_out, help="results JSON path")
    parser.add_argument("--log-level", default="INFO")
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds`` (perf_counter based)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
