#!/usr/bin/env bash
# One-call GPU check for the lent GPU machine (one H200, its own Python 3.12 + torch 2.11, no network).
# Writes one JSON ($OUT/gpu_check.json there, else benchmarks/results/gpu_check.json) in under 6 minutes.
#
#   here, once:   bash benchmarks/gpu_check_prep.sh           # wheels for what that machine lacks -> .whl/
#   there:        bash benchmarks/gpu_check.sh                # with .whl carried along (device run: carry [".whl"])
#
# Without a GPU it stops at once, before installing or importing anything heavy, and says so (exit 3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULT=${1:-${OUT:-benchmarks/results}/gpu_check.json}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists none); nothing to measure." \
         "Run it on the GPU machine." >&2
    exit 3
fi

WHEELS=${GPU_CHECK_WHEELS:-.whl}
if [ -d "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    # The machine's own torch stays; only what it lacks is added, into a folder of its own.
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

# The parts keep to 300 s between them; the timeout only catches a hang, and partial results stay in the JSON.
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
timeout 330 "$PYTHON" -m benchmarks.gpu_check --budget-s 300 --out "$RESULT"
