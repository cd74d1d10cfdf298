# GPU image of the re-id service (and of reid-train, see docker-compose.yml).
#
#   docker compose build            # or: docker build -t soccernet-reid:gpu .
#   docker build --build-arg EXTRAS=cpu -t soccernet-reid:cpu .   # no GPU faiss, for CPU-only hosts
#
# CUDA comes with the wheels, not the base image: torch and faiss each pull their CUDA runtime, cuBLAS (and
# torch cuDNN, NCCL) as nvidia-* wheels; an nvidia/cuda base would only add an unused copy of those libraries.
# One CUDA major for both: PyPI's torch 2.14.1 is built for CUDA 13 and pins its runtime at 13.0 and cuBLAS at
# 13.1, while the only CUDA 13 faiss wheel (faiss-gpu-cuvs 1.15) needs both >= 13.2, so pip cannot install
# the two together. The gpu image therefore takes torch's CUDA 12.8 build from PyTorch's index (TORCH_INDEX)
# and faiss-gpu 1.15 (CUDA >= 12.6, < 13): both on CUDA 12. The host provides the driver through the NVIDIA
# Container Toolkit.
# BuildKit is needed for the pip cache mount (the default builder of Docker Engine >= 23 and of compose v2).
FROM python:3.11-slim-bookworm

# gpu: faiss-gpu (CUDA 12). cpu: faiss-cpu. Exactly one of the two (see pyproject.toml).
ARG EXTRAS=gpu
# Where torch comes from: a CUDA 12 build, to match faiss-gpu's CUDA major (see above). A CPU-only image can
# pass --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu (smaller); empty means PyPI.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

# The version is pyproject.toml's (tests/test_versions.py checks that they agree).
LABEL org.opencontainers.image.title="soccernet-reid" \
      org.opencontainers.image.version="0.2.0" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.description="Player re-identification service for broadcast football"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# make runs the Makefile's install target below; nothing else is needed from Debian.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# README.md is the package's readme in pyproject.toml, so the install needs it.
COPY pyproject.toml Makefile README.md LICENSE ./
COPY model/ model/
COPY training/ training/
COPY service/ service/

# The documented (docs/getting-started.md) and CI's install step, not a second recipe: venv + torch + the project with its extras.
RUN --mount=type=cache,target=/root/.cache/pip \
    make install VENV=/opt/venv EXTRAS=${EXTRAS} PYTHON=python3.11 TORCH_INDEX=${TORCH_INDEX}

# The venv and the source stay root-owned and read-only to the service; only /data and /runs are its own.
RUN useradd --system --no-log-init --uid 10001 --user-group --create-home --home-dir /home/reid reid \
    && mkdir -p /data /models /runs \
    && chown reid:reid /data /runs

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    REID_CHECKPOINT=/models/model.safetensors \
    REID_DATA_DIR=/data \
    REID_DEVICE=auto

# Numeric, so that a runtime (Kubernetes runAsNonRoot) can tell it is not root without /etc/passwd.
USER 10001:10001
# /data: SQLite gallery (the source of truth; the FAISS index is rebuilt from it). /models: the checkpoint.
VOLUME ["/data", "/models"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Exec form: reid-serve is PID 1 and gets SIGTERM from `docker stop` directly. Other settings: REID_* env.
CMD ["reid-serve", "--host", "0.0.0.0", "--port", "8000"]
