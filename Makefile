# Wafer defect platform. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
EXTRAS ?= dev,edge,fab,cloud,quantum
PYTEST_ARGS ?=

.PHONY: help setup test unit integration lint format proto demo serve bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) ## Create the virtual environment and install the project (editable, all extras)

test: lint ## Lint, then run every test (unit and integration; real PostgreSQL and Redis)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP) ## Run the unit tests only (nothing running needed)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP) ## Run the integration tests only
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (check and format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP) ## Format and fix what ruff can
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

proto: $(STAMP) ## Regenerate the Python code of the protobuf contracts (the only generator)
	$(PY) proto/generate.py

demo: $(STAMP) ## Run the main job on embedded defaults (SQLite, local files, no servers)
	$(VENV)/bin/wafer-platform demo

serve: $(STAMP) ## Start every tier on this machine (review UI on :8080), health-checked, until Ctrl-C
	$(VENV)/bin/wafer-platform up --http-port $${HTTP_PORT:-8080}

bench: $(STAMP) ## Run the benchmarks; they print figures (WAFER_DATA_DIR defaults to ../shared/data/wm811k)
	WAFER_DATA_DIR=$${WAFER_DATA_DIR:-../shared/data/wm811k} $(PY) bench/read_preprocess.py
	WAFER_DATA_DIR=$${WAFER_DATA_DIR:-../shared/data/wm811k} $(PY) bench/model_latency.py

clean: ## Remove the virtual environment, caches and local run data
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis var build *.egg-info
