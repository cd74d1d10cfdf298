#!/usr/bin/env bash
# The GPU check on this CPU, from a venv that holds only what the GPU machine would have: torch + torchvision, the
# packages of the machine's image that the project reaches, and the carried wheels' packages at their versions
# (benchmarks/gpu_wheels.py). An import the GPU machine would miss fails here first. CI runs it (.ci/run).
#
#   bash benchmarks/gpu_check_dry_run.sh [VENV_DIR]     # default: a temporary folder, removed afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}
venv=${1:-}
if [ -z "$venv" ]; then
    venv=$(mktemp -d)/gpu-dry
    trap 'rm -rf "$(dirname "$venv")"' EXIT
fi
"$VENV_PYTHON" -m benchmarks.gpu_wheels dry-run-env --venv "$venv"
out=$(mktemp -d)
# Not the project's venv and not an editable install: the tree is on PYTHONPATH, as on the GPU machine.
PYTHONPATH=$PWD "$venv/bin/python" -m benchmarks.gpu_check --allow-cpu --quick --budget-s 120 --out "$out/gpu_check.json"
"$venv/bin/python" - "$out/gpu_check.json" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
broken = {part: result[part]["error"] for part in ("embed", "train", "service", "faiss", "compile")
          if isinstance(result.get(part), dict) and "error" in result[part]}
missing = [part for part in ("embed", "train", "service", "faiss", "compile") if part not in result]
if broken or missing:
    sys.exit(f"gpu_check dry run: parts failed {broken} or missing {missing}")
print("gpu_check dry run: every part ran from the GPU machine's package set")
PY
