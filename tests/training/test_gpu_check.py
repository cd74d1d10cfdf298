"""benchmarks/gpu_check.sh: stops at once, with a clear message and no JSON, where there is no GPU; its Python part
runs every code path on a CPU (opt-in smoke run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(tmp_path: Path, path_dirs: list[str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.pathsep.join(path_dirs), "HOME": str(tmp_path), "PYTHON": sys.executable,
           "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels")}
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "gpu_check.json")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_stops_at_once_without_nvidia_smi(tmp_path: Path) -> None:
    done = _run(tmp_path, ["/usr/bin", "/bin"])
    assert done.returncode == 3, done.stderr
    assert "no NVIDIA GPU here" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_stops_when_torch_sees_no_gpu(tmp_path: Path) -> None:
    """nvidia-smi answers (a stand-in) but torch finds no CUDA device: the Python part refuses, before measuring."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: stand-in'\n")
    (fake / "nvidia-smi").chmod(0o755)
    done = _run(tmp_path, [str(fake), "/usr/bin", "/bin"])
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no CUDA GPU visible to torch" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RUN_SLOW_TESTS") != "1", reason="a minute or two of CPU: RUN_SLOW_TESTS=1")
def test_every_part_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--allow-cpu", "--quick", "--budget-s", "60",
                           "--out", str(out)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for part in ("embed", "train", "service", "faiss", "compile"):
        assert "error" not in result[part], (part, result[part])
    assert result["train"]["steps"] >= 1 and result["service"]["modes"]["batched"]["requests"] > 0
    assert result["faiss"]["hnsw"]["built"] > 0
