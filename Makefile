# One target per thing a person does. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test lint format run backfill clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pipeline and its test tools (from PyPI only)

test: $(STAMP) ## run the whole test suite
	$(PY) -m pytest -q

lint: $(STAMP) ## ruff: lint and formatting check
	$(PY) -m ruff check pipeline tests
	$(PY) -m ruff format --check pipeline tests

format: $(STAMP) ## ruff: fix formatting
	$(PY) -m ruff format pipeline tests
	$(PY) -m ruff check --fix pipeline tests

# make run PLAYERS=500 EVENT_GAP=2 TIMEOUT=120 WINDOW=30 ...
PLAYERS ?= 200
EVENT_GAP ?= 4
TIMEOUT ?= 60
WINDOW ?= 10
MINUTES ?= 60
SHARDS ?= 2
RUN_FLAGS ?=

run: $(STAMP) ## the whole system locally: embedded AWS (moto), live simulator, pipeline, live view (Ctrl-C stops)
	$(PY) -m pipeline.run_local --players $(PLAYERS) --event_gap_secs $(EVENT_GAP) --timeout_secs $(TIMEOUT) \
		--window_secs $(WINDOW) --minutes $(MINUTES) --shards $(SHARDS) $(RUN_FLAGS)

backfill: $(STAMP) ## bounded replay: simulate 30 minutes of 300 players to a file, run the pipeline over it into out/
	$(PY) -m pipeline.simulate --seed 7 --players 300 --minutes 30 --out out/events.tsv
	$(PY) -m pipeline.main --input 'out/events.tsv' --snapshot_path out/snapshots --dead_letter_path out/dead_letters
	@echo "snapshots in out/snapshots (latest: out/snapshots/level_information.json)"

clean: ## remove the virtualenv and outputs
	rm -rf $(VENV) out *.egg-info .pytest_cache .ruff_cache .hypothesis
