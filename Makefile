# One recipe for every machine: the README, CI and the Docker image all go through these targets.
PYTHON ?= python3.11
VENV ?= .venv
EXTRAS ?= cpu,dev
# Package index for torch/torchvision (empty: PyPI, CUDA 13 builds). The GPU image sets PyTorch's cu128 index so
# that torch and faiss-gpu share CUDA 12 (see Dockerfile).
TORCH_INDEX ?=
DEMO_CHECKPOINT := artifacts/demo.safetensors
# The default model: small, trained here on real people, committed with its ONNX graph and model card
# (docs/models.md); served from the graph without torch (the `serve` extra).
DEFAULT_CHECKPOINT := checkpoints/default.safetensors
DEFAULT_GRAPH := checkpoints/default.onnx
CHECKPOINT ?= $(DEFAULT_GRAPH)
HOST ?= 127.0.0.1
PORT ?= 8000
# `make docs` serves the documentation site here (beside the service on PORT).
DOCS_PORT ?= 8001
# make serve MODEL=demo serves the demo model (trained here on SYNTHETIC players, needs torch); MODEL=NAME a
# pretrained model of the zoo (list: .venv/bin/reid-fetch --list). Empty: CHECKPOINT (default: the default model).
MODEL ?=
# The serving install: no torch, a few hundred megabytes (pyproject.toml: serve extra). `make serve` uses it
# whenever the model ships its ONNX graph; models that still need an export (demo, zoo) use the full install.
SERVE_VENV ?= .venv-serve
PY := $(VENV)/bin/python
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# torch is installed first from TORCH_INDEX for every install but the torch-free `serve` one.
NEEDS_TORCH := $(filter-out serve,$(subst $(comma), ,$(EXTRAS)))
# With the dev extra, the reference scorers the tests compare against (tests/training/evaluation/test_reference_scorers.py):
# torchreid's evaluation and re-ranking, and SoccerNet's scorer without its downloader's dependencies.
ORACLES := $(if $(findstring dev,$(EXTRAS)),$(comma)oracles)
# What `make serve` serves, with which install, and what it may build first: the demo checkpoint or a zoo
# download (both with the full install), never anything else.
# Until the default model is in the checkout, plain `make serve` falls back to the demo (and says so).
SERVE_MODEL := $(strip $(MODEL))
DEFAULT_MISSING := $(if $(SERVE_MODEL),,$(if $(filter $(DEFAULT_GRAPH),$(CHECKPOINT)),$(if $(wildcard $(DEFAULT_GRAPH)),,yes)))
ifeq ($(DEFAULT_MISSING),yes)
SERVE_MODEL := demo
endif
ifeq ($(SERVE_MODEL),demo)
SERVE_CHECKPOINT := $(DEMO_CHECKPOINT)
SERVE_BUILDS := $(DEMO_CHECKPOINT)
SERVE_WITH := $(VENV)
SERVE_NOTE := NOTE: serving the demo model, trained on SYNTHETIC players: it says nothing about real footage.\
$(if $(DEFAULT_MISSING), ($(DEFAULT_GRAPH) is not in this checkout, so the demo stands in for it.))
else ifneq ($(SERVE_MODEL),)
SERVE_CHECKPOINT := artifacts/zoo/$(MODEL).safetensors
SERVE_BUILDS := $(SERVE_CHECKPOINT)
SERVE_WITH := $(VENV)
SERVE_NOTE := Serving $(MODEL) from the pretrained zoo; its provenance and licences: GET /info.
else
# A checkpoint whose graph lies beside it (what reid-export --format onnx writes) is served from the graph.
SERVE_CHECKPOINT := $(if $(and $(filter %.safetensors,$(CHECKPOINT)),$(wildcard $(basename $(CHECKPOINT)).onnx)),$(basename $(CHECKPOINT)).onnx,$(CHECKPOINT))
SERVE_BUILDS :=
SERVE_WITH := $(if $(filter %.onnx,$(SERVE_CHECKPOINT)),$(SERVE_VENV),$(VENV))
SERVE_NOTE := $(if $(filter $(DEFAULT_GRAPH),$(SERVE_CHECKPOINT)),Serving the default model: trained here on real \
people (Market-1501 half$(comma) research use)$(comma) not yet on football. Model card: GET /info. Synthetic demo: \
make serve MODEL=demo.)
endif
SERVE_NAME := $(notdir $(basename $(SERVE_CHECKPOINT)))
SERVE_INSTALL := $(if $(filter $(SERVE_VENV),$(SERVE_WITH)),install-serve,install)
# One gallery folder per model by default (data/default, data/demo, ...): a gallery holds one model's embeddings.
DATA_ROOT ?= data

.PHONY: install install-serve serve test mutations lint lint-ruff lint-mypy lint-docker demo-model default-model \
	check-checkpoint docs docs-build clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(if $(NEEDS_TORCH),$(PY) -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.14.1 torchvision==0.29.1)
	$(PY) -m pip install -e ".[$(EXTRAS)$(ORACLES)]"
	$(if $(ORACLES),$(PY) -m pip install --no-deps SoccerNet==0.2.0)
	touch $@

install: $(STAMP)

# The torch-free serving install in its own venv (make serve uses it for a model with its ONNX graph).
install-serve:
	@$(MAKE) --no-print-directory install VENV=$(SERVE_VENV) EXTRAS=serve

# Only the demo checkpoint is built on demand; any other CHECKPOINT must exist (a typo must not train a demo model).
$(DEMO_CHECKPOINT): | install
	@echo "Building the demo model from SYNTHETIC players (offline, a few minutes; the default model: make serve)."
	$(VENV)/bin/reid-demo-model --out $(DEMO_CHECKPOINT)

# Downloaded (resumably, hash-checked), converted and cached by reid-fetch; offline it says how to do it by hand.
artifacts/zoo/%.safetensors: | install
	$(VENV)/bin/reid-fetch $* --out $@

demo-model: $(DEMO_CHECKPOINT)

# Rebuild the committed default model from ../shared/data (offline, CPU; docs/models.md): split the Market-1501
# half by identity, train with the default config, calibrate the no-match threshold on CUHK03 people 1000-1466.
# One torch thread: on a shared 2-core machine two threads waiting on each other are several times slower.
SHARED_DATA ?= ../shared/data
DATASETS ?= datasets
default-model: | install
	$(PY) -m training.data.market_half $(SHARED_DATA)/market1501_half_train.tar $(DATASETS)/market_half
	mkdir -p $(DATASETS)/cuhk03 && tar xf $(SHARED_DATA)/cuhk03_64x128.tar -C $(DATASETS)/cuhk03
	OMP_NUM_THREADS=1 $(VENV)/bin/reid-train --config training/configs/default_model.yaml \
		data.root=$(DATASETS)/market_half run.out_dir=runs/default_model
	$(VENV)/bin/reid-calibrate runs/default_model/last.safetensors --data-format cuhk03 \
		--data-root $(DATASETS)/cuhk03/dataset/images/full --threads 1 --out $(DEFAULT_CHECKPOINT)
	$(VENV)/bin/reid-export $(DEFAULT_CHECKPOINT) --format onnx

# First prerequisite, so a missing file is reported before anything is installed or built.
check-checkpoint:
	@if [ -z "$(SERVE_MODEL)" ] && [ ! -f "$(CHECKPOINT)" ]; then \
		echo "make serve: no such file: CHECKPOINT=$(CHECKPOINT) (only MODEL=demo is built on demand)" >&2; \
		exit 1; \
	fi

# REID_DATA_DIR, REID_CHECKPOINT (and every other REID_* setting) from the environment win over these defaults.
serve: check-checkpoint $(SERVE_INSTALL) $(SERVE_BUILDS)
	@$(if $(SERVE_NOTE),echo "$(SERVE_NOTE)",true)
	REID_CHECKPOINT=$${REID_CHECKPOINT:-$(SERVE_CHECKPOINT)} REID_DATA_DIR=$${REID_DATA_DIR:-$(DATA_ROOT)/$(SERVE_NAME)} \
		$(SERVE_WITH)/bin/reid-serve --host $(HOST) --port $(PORT)

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
	rm -rf $(VENV) $(SERVE_VENV) artifacts site .pytest_cache .mypy_cache .ruff_cache
