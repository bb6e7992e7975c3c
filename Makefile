# One target per thing a person does. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test lint format run backfill bench flink-jar test-flink run-flink clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pipeline and its test tools (from PyPI only)

test: $(STAMP) ## run the whole test suite (Flink's included: it builds the Flink jar first, if Maven can)
	-@$(MAKE) --no-print-directory flink-jar
	FLINK_JOB_SERVER_JAR=$(FLINK_JAR) $(PY) -m pytest -q -rs

lint: $(STAMP) ## ruff: lint and formatting check
	$(PY) -m ruff check pipeline tests bench
	$(PY) -m ruff format --check pipeline tests bench

format: $(STAMP) ## ruff: fix formatting
	$(PY) -m ruff format pipeline tests bench
	$(PY) -m ruff check --fix pipeline tests bench

bench: $(STAMP) ## benchmarks, each figure beside its comparison (~15 min); JSON in bench/results/
	$(PY) -m bench.run

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

# Beam's Flink job server, assembled by Maven from Maven Central (flink/pom.xml, docs/flink.md).
FLINK_JAR ?= $(or $(FLINK_JOB_SERVER_JAR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/level-analytics/beam-runners-flink-1.19-job-server-2.62.0.jar)

flink-jar: $(FLINK_JAR) ## build Beam's Flink job server jar with Maven (once; cached under ~/.cache)

$(FLINK_JAR): flink/pom.xml
	mvn -B -q -Dstyle.color=never -f flink/pom.xml package
	mkdir -p $(dir $(FLINK_JAR))
	cp flink/target/beam-flink-job-server.jar $(FLINK_JAR)

test-flink: $(STAMP) ## only the Flink and portable-runner tests: embedded Flink, checkpoints, recovery (~5 min)
	-@$(MAKE) --no-print-directory flink-jar
	FLINK_JOB_SERVER_JAR=$(FLINK_JAR) $(PY) -m pytest -q -rs tests/test_flink.py tests/test_portable_runner.py

run-flink: $(STAMP) flink-jar ## `make run` with one pipeline on an embedded Flink (checkpoints on) instead of segments
	$(PY) -m pipeline.run_local --players $(PLAYERS) --event_gap_secs $(EVENT_GAP) --timeout_secs $(TIMEOUT) \
		--window_secs $(WINDOW) --minutes $(MINUTES) --shards $(SHARDS) $(RUN_FLAGS) \
		--runner FlinkRunner --flink_master '[local]' --flink_job_server_jar $(FLINK_JAR) --parallelism 2

clean: ## remove the virtualenv and outputs
	rm -rf $(VENV) out *.egg-info .pytest_cache .ruff_cache .hypothesis
