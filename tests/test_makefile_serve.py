"""`make serve`: serves the committed default model with nothing to build; a CHECKPOINT that does not exist fails
at once with "no such file"; only the demo checkpoint (MODEL=demo) is built on demand. Runs the real Makefile
against a throwaway venv path (nothing is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60
    )


def _fake_venv(tmp_path: Path) -> Path:
    """A venv folder whose install stamp is current, so `make -n` plans no install."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-cpu-dev").touch()
    return venv


def test_missing_checkpoint_fails_before_installing_anything(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    missing = tmp_path / "artifacts" / "osnet_x025.safetensors"
    # PYTHON points nowhere: should the check ever be skipped, the install step fails at once instead of running.
    run = _make("serve", f"VENV={venv}", f"CHECKPOINT={missing}", f"PYTHON={tmp_path / 'no-python3.11'}")
    assert run.returncode != 0
    assert f"no such file: CHECKPOINT={missing}" in run.stderr
    assert not venv.exists() and not missing.exists()  # no install started, no demo model trained


def _fake_serve_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv-serve"
    venv.mkdir()
    (venv / ".installed-serve").touch()
    return venv


def test_default_serves_the_shipped_graph_from_the_torch_free_install(tmp_path: Path) -> None:
    venv, serve_venv = _fake_venv(tmp_path), _fake_serve_venv(tmp_path)
    graph = tmp_path / "checkpoints" / "default.onnx"
    common = [f"VENV={venv}", f"SERVE_VENV={serve_venv}", f"DEFAULT_GRAPH={graph}"]
    # Not shipped yet: the demo stands in, built and served with the full install, and the note says so.
    absent = _make("-n", "serve", *common, f"DEMO_CHECKPOINT={tmp_path / 'demo.safetensors'}")
    assert absent.returncode == 0, absent.stderr
    assert f"reid-demo-model --out {tmp_path / 'demo.safetensors'}" in absent.stdout
    assert f"{graph} is not in this checkout, so the demo stands in for it." in absent.stdout
    assert f"{venv}/bin/reid-serve" in absent.stdout

    graph.parent.mkdir()
    graph.write_bytes(b"graph")
    plan = _make("-n", "serve", *common, "PORT=9123")
    assert plan.returncode == 0, plan.stderr
    assert f"{serve_venv}/bin/reid-serve --host 127.0.0.1 --port 9123" in plan.stdout
    assert f"REID_CHECKPOINT=${{REID_CHECKPOINT:-{graph}}}" in plan.stdout
    assert "REID_DATA_DIR=${REID_DATA_DIR:-data/default}" in plan.stdout  # one data folder per model
    assert "torch" not in plan.stdout and "reid-demo-model" not in plan.stdout


def test_default_serve_builds_nothing_and_serves_the_committed_model(tmp_path: Path) -> None:
    venv, serve_venv = _fake_venv(tmp_path), _fake_serve_venv(tmp_path)
    demo = tmp_path / "demo.safetensors"
    plan = _make("-n", "serve", f"VENV={venv}", f"SERVE_VENV={serve_venv}", f"DEMO_CHECKPOINT={demo}")
    assert plan.returncode == 0, plan.stderr
    assert "reid-demo-model" not in plan.stdout and "reid-fetch" not in plan.stdout
    assert "REID_CHECKPOINT=${REID_CHECKPOINT:-checkpoints/default.onnx}" in plan.stdout
    assert f"{serve_venv}/bin/reid-serve" in plan.stdout
    assert (ROOT / "checkpoints" / "default.onnx").is_file()
    assert (ROOT / "checkpoints" / "default.safetensors").is_file()


def test_only_the_demo_checkpoint_is_built_on_demand(tmp_path: Path) -> None:
    venv, serve_venv = _fake_venv(tmp_path), _fake_serve_venv(tmp_path)
    demo = tmp_path / "demo.safetensors"
    plan = _make("-n", "serve", f"VENV={venv}", f"SERVE_VENV={serve_venv}", f"DEMO_CHECKPOINT={demo}", "MODEL=demo")
    assert plan.returncode == 0, plan.stderr
    assert f"reid-demo-model --out {demo}" in plan.stdout
    assert f"{venv}/bin/reid-serve" in plan.stdout and "REID_DATA_DIR=${REID_DATA_DIR:-data/demo}" in plan.stdout

    existing = tmp_path / "real.safetensors"
    existing.write_bytes(b"weights")
    plan = _make("-n", "serve", f"VENV={venv}", f"SERVE_VENV={serve_venv}", f"DEMO_CHECKPOINT={demo}",
                 f"CHECKPOINT={existing}")
    assert plan.returncode == 0, plan.stderr
    assert "reid-demo-model" not in plan.stdout
    # No graph beside it: the full install serves it (and exports its graph at the first start).
    assert f"REID_CHECKPOINT=${{REID_CHECKPOINT:-{existing}}}" in plan.stdout
    assert f"{venv}/bin/reid-serve" in plan.stdout

    existing.with_suffix(".onnx").write_bytes(b"graph")
    plan = _make("-n", "serve", f"VENV={venv}", f"SERVE_VENV={serve_venv}", f"CHECKPOINT={existing}")
    assert plan.returncode == 0, plan.stderr
    assert f"REID_CHECKPOINT=${{REID_CHECKPOINT:-{existing.with_suffix('.onnx')}}}" in plan.stdout
    assert f"{serve_venv}/bin/reid-serve" in plan.stdout
