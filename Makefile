# One recipe for every machine: the README, CI and the Docker image all go through these targets.
PYTHON ?= python3.11
VENV ?= .venv
EXTRAS ?= cpu,dev
DEMO_CHECKPOINT := artifacts/demo.safetensors
CHECKPOINT ?= $(DEMO_CHECKPOINT)
HOST ?= 127.0.0.1
PORT ?= 8000
PY := $(VENV)/bin/python
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install serve test lint demo-model check-checkpoint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

# Only the demo checkpoint is built on demand; any other CHECKPOINT must exist (a typo must not train a demo model).
$(DEMO_CHECKPOINT): | install
	$(VENV)/bin/reid-demo-model --out $(DEMO_CHECKPOINT)

demo-model: $(DEMO_CHECKPOINT)

# First prerequisite, so a missing file is reported before anything is installed or built.
check-checkpoint:
	@if [ "$(CHECKPOINT)" != "$(DEMO_CHECKPOINT)" ] && [ ! -f "$(CHECKPOINT)" ]; then \
		echo "make serve: no such file: CHECKPOINT=$(CHECKPOINT) (only $(DEMO_CHECKPOINT) is built on demand)" >&2; \
		exit 1; \
	fi

serve: check-checkpoint install $(if $(filter $(DEMO_CHECKPOINT),$(CHECKPOINT)),$(DEMO_CHECKPOINT))
	REID_CHECKPOINT=$${REID_CHECKPOINT:-$(CHECKPOINT)} $(VENV)/bin/reid-serve --host $(HOST) --port $(PORT)

test: install
	$(VENV)/bin/python -m pytest -q -rs

lint: install
	$(VENV)/bin/ruff check model training service tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) artifacts .pytest_cache .mypy_cache .ruff_cache
