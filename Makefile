# One recipe for every machine: the README, CI and the Docker image all go through these targets.
PYTHON ?= python3.11
VENV ?= .venv
EXTRAS ?= cpu,dev
# Package index for torch/torchvision (empty: PyPI, CUDA 13 builds). The GPU image sets PyTorch's cu128 index so
# that torch and faiss-gpu share CUDA 12 (see Dockerfile).
TORCH_INDEX ?=
DEMO_CHECKPOINT := artifacts/demo.safetensors
CHECKPOINT ?= $(DEMO_CHECKPOINT)
HOST ?= 127.0.0.1
PORT ?= 8000
# `make docs` serves the documentation site here (beside the service on PORT).
DOCS_PORT ?= 8001
# make serve MODEL=NAME serves a pretrained model of the zoo (list: .venv/bin/reid-fetch --list) instead of the demo.
MODEL ?=
PY := $(VENV)/bin/python
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# With the dev extra, the reference scorers the tests compare against (tests/training/evaluation/test_reference_scorers.py):
# torchreid's evaluation and re-ranking, and SoccerNet's scorer without its downloader's dependencies.
ORACLES := $(if $(findstring dev,$(EXTRAS)),$(comma)oracles)
# What `make serve` serves, and what it may build first: the demo checkpoint or a zoo download, never anything else.
ifneq ($(strip $(MODEL)),)
SERVE_CHECKPOINT := artifacts/zoo/$(MODEL).safetensors
SERVE_BUILDS := $(SERVE_CHECKPOINT)
SERVE_NOTE := Serving $(MODEL) from the pretrained zoo; its provenance and licences: GET /info.
else ifeq ($(CHECKPOINT),$(DEMO_CHECKPOINT))
SERVE_CHECKPOINT := $(DEMO_CHECKPOINT)
SERVE_BUILDS := $(DEMO_CHECKPOINT)
SERVE_NOTE := NOTE: serving the demo model, trained on SYNTHETIC players: it says nothing about real footage. \
For a model of real people: make serve MODEL=osnet_x0_25_msmt17 (all: $(VENV)/bin/reid-fetch --list).
else
SERVE_CHECKPOINT := $(CHECKPOINT)
SERVE_BUILDS :=
SERVE_NOTE :=
endif

.PHONY: install serve test mutations lint lint-ruff lint-mypy lint-docker demo-model check-checkpoint docs docs-build clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e ".[$(EXTRAS)$(ORACLES)]"
	$(if $(ORACLES),$(PY) -m pip install --no-deps SoccerNet==0.2.0)
	touch $@

install: $(STAMP)

# Only the demo checkpoint is built on demand; any other CHECKPOINT must exist (a typo must not train a demo model).
$(DEMO_CHECKPOINT): | install
	@echo "Building the demo model from SYNTHETIC players (offline; real people: make serve MODEL=NAME)."
	$(VENV)/bin/reid-demo-model --out $(DEMO_CHECKPOINT)

# Downloaded (resumably, hash-checked), converted and cached by reid-fetch; offline it says how to do it by hand.
artifacts/zoo/%.safetensors: | install
	$(VENV)/bin/reid-fetch $* --out $@

demo-model: $(DEMO_CHECKPOINT)

# First prerequisite, so a missing file is reported before anything is installed or built.
check-checkpoint:
	@if [ -z "$(strip $(MODEL))" ] && [ "$(CHECKPOINT)" != "$(DEMO_CHECKPOINT)" ] && [ ! -f "$(CHECKPOINT)" ]; then \
		echo "make serve: no such file: CHECKPOINT=$(CHECKPOINT) (only $(DEMO_CHECKPOINT) is built on demand)" >&2; \
		exit 1; \
	fi

serve: check-checkpoint install $(SERVE_BUILDS)
	@$(if $(SERVE_NOTE),echo "$(SERVE_NOTE)",true)
	REID_CHECKPOINT=$${REID_CHECKPOINT:-$(SERVE_CHECKPOINT)} $(VENV)/bin/reid-serve --host $(HOST) --port $(PORT)

test: install
	$(VENV)/bin/python -m pytest -q -rs

# Known breakages of the product (.ci/mutations.py --list), each run against the tests meant to catch it in a
# temporary copy of the tree; fails if any survives.
mutations: install
	$(VENV)/bin/python .ci/mutations.py

# The linters' versions are pinned in pyproject.toml (dev extra); .pre-commit-config.yaml calls these targets.
lint: lint-ruff lint-mypy lint-docker

lint-ruff: install
	$(VENV)/bin/ruff check model training service tests benchmarks .ci

lint-mypy: install
	$(VENV)/bin/mypy

lint-docker: install
	$(VENV)/bin/hadolint --config .hadolint.yaml Dockerfile

# The documentation site (mkdocs.yml): served with live reload on 127.0.0.1 only; built strictly (a broken link,
# a missing anchor or a page left out of the navigation fails), as CI does.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr $(HOST):$(DOCS_PORT)

docs-build: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) artifacts site .pytest_cache .mypy_cache .ruff_cache
