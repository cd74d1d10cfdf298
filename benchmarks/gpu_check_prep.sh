#!/usr/bin/env bash
# Prepare .whl/ (git-ignored) for benchmarks/gpu_check.sh: wheels for Python 3.12 / x86-64 of what the GPU
# machine's image lacks (it has torch 2.11, numpy, pillow, safetensors, pyyaml, httpx, jinja2, h11, click,
# prometheus-client, ...: see the device README's KINDS.md). Versions are the ones installed in this project's
# venv, so the service runs there on the code and libraries tested here. GPU faiss is not carried: the CUDA 12
# wheels need CUDA 12 libraries that machine lacks (CUDA 13 only), and faiss-gpu-cuvs (CUDA 13) needs cuVS
# libraries of several hundred MB, past the 64 MiB a call may carry.
#
#   bash benchmarks/gpu_check_prep.sh          # -> .whl/*.whl, size printed; then carry [".whl"] to the device
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}
DEST=.whl
PACKAGES=(fastapi starlette pydantic pydantic-core annotated-types typing-inspection typing-extensions
          pydantic-settings python-dotenv python-multipart uvicorn anyio opentelemetry-api faiss-cpu
          swagger-ui-bundle)
LIMIT_MIB=48   # of the 64 MiB a device call carries, the rest is for the working tree

rm -rf "$DEST"
mkdir -p "$DEST"
for name in "${PACKAGES[@]}"; do
    version=$("$VENV_PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    "$VENV_PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$name==$version"
done
ls -l "$DEST"
size_kib=$(du -sk "$DEST" | cut -f1)
echo "gpu_check_prep: $(ls "$DEST" | wc -l) wheels, $((size_kib / 1024)) MiB in $DEST"
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
    echo "gpu_check_prep: more than $LIMIT_MIB MiB: the device call would not carry it with the tree" >&2
    exit 1
fi
