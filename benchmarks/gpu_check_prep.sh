#!/usr/bin/env bash
# Prepare .whl/ (git-ignored) for benchmarks/gpu_check.sh: cp312 x86-64 wheels of what the GPU check needs and the
# GPU machine's image lacks. The list is derived from the project's dependency metadata (benchmarks/gpu_wheels.py;
# what the image holds: benchmarks/gpu_machine_packages.txt), at the versions installed in this project's venv, so
# the service runs there on the code and libraries tested here. Fails past 48 MiB (a device call carries 64 MiB).
# GPU faiss is not carried: the CUDA 12 wheels need CUDA 12 libraries that machine lacks (CUDA 13 only), and
# faiss-gpu-cuvs (CUDA 13) needs cuVS libraries of several hundred MB.
#
#   bash benchmarks/gpu_check_prep.sh          # -> .whl/*.whl, size printed; then carry [".whl"] to the device
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}
"$VENV_PYTHON" -m benchmarks.gpu_wheels list
"$VENV_PYTHON" -m benchmarks.gpu_wheels download --dest "${GPU_CHECK_WHEELS:-.whl}"
