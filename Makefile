# One target per thing a person does. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install prism toxiproxy test test-fast lint format run dashboard backfill bench bench-throughput soak soak-short chaos fuzz hostile flink-jar test-flink run-flink clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) prism ## create .venv with the pipeline and its test tools (PyPI), and build Prism (Go)

# Prism, Beam's local streaming engine: the pinned Beam version's source from the Go module
# proxy with one fix applied (PRISM_PATCH: Prism as released keeps an empty entry for every
# state cell ever cleared, one per player who left, for as long as it runs;
# docs/upstream/prism-cleared-state.md), built with Go (about 3 minutes the first time;
# cached outside the repository, rebuilt when the patch changes). `git apply` is run with
# no repository above the copy, so it patches it as `patch -p1` would.
BEAM_VERSION := $(shell sed -n 's/.*"apache-beam\[aws\]==\([0-9.]*\)".*/\1/p' setup.py)
PRISM_PATCH := patches/prism-forget-cleared-state.patch
PRISM ?= $(or $(PRISM_LOCATION),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/level-analytics/prism-$(BEAM_VERSION)-patched/prism)
PRISM_SRC = $(PRISM)-source

prism: $(PRISM) ## build Prism, Beam's streaming engine, with Go (once; cached under ~/.cache)

$(PRISM): $(PRISM_PATCH)
	@command -v go >/dev/null || { echo "Go is needed to build Prism (https://go.dev/doc/install); or pass --prism_location to pipeline.main (Beam's release download, where github.com is reachable; without the fix in $(PRISM_PATCH))"; exit 1; }
	rm -rf $(PRISM_SRC) && mkdir -p $(PRISM_SRC)
	module=$$(go mod download -json github.com/apache/beam/sdks/v2@v$(BEAM_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && \
	  test -n "$$module" && cp -R "$$module/go.mod" "$$module/go.sum" "$$module/go" $(PRISM_SRC)/
	chmod -R u+w $(PRISM_SRC)
	cd $(PRISM_SRC) && GIT_CEILING_DIRECTORIES=$(abspath $(dir $(PRISM))) git apply $(abspath $(PRISM_PATCH))
	grep -q "isEmpty()" $(PRISM_SRC)/go/pkg/beam/runners/prism/internal/engine/elementmanager.go
	cd $(PRISM_SRC) && go build -o $(abspath $(PRISM)) ./go/cmd/prism
	rm -rf $(PRISM_SRC)

# Toxiproxy, the chaos proxy the fault tests put between the pipeline and the embedded
# AWS, built with Go from the Go module proxy (once; cached outside the repository).
TOXIPROXY_VERSION := 2.5.0
TOXIPROXY ?= $(or $(TOXIPROXY_SERVER),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/level-analytics/toxiproxy-$(TOXIPROXY_VERSION)/server)

toxiproxy: $(TOXIPROXY) ## build Toxiproxy, the chaos proxy of the fault tests, with Go (once; cached under ~/.cache)

$(TOXIPROXY):
	@command -v go >/dev/null || { echo "Go is needed to build Toxiproxy; without it the fault tests through a proxy are skipped"; exit 1; }
	mkdir -p $(dir $(TOXIPROXY))
	cd $(dir $(TOXIPROXY)) && GOBIN=$(abspath $(dir $(TOXIPROXY))) go install github.com/Shopify/toxiproxy/v2/cmd/server@v$(TOXIPROXY_VERSION)

test: install ## run the whole test suite (Flink's, the browser's and the chaos proxy's included: it builds the Flink jar and Toxiproxy and installs Chromium first, where it can)
	-@$(MAKE) --no-print-directory flink-jar
	-@$(MAKE) --no-print-directory toxiproxy
	-@bash .ci/install-browser
	FLINK_JOB_SERVER_JAR=$(FLINK_JAR) PRISM_LOCATION=$(PRISM) TOXIPROXY_SERVER=$(TOXIPROXY) $(PY) -m pytest -q -rs

test-fast: $(STAMP) ## the inner loop (under 2 minutes): every test but the slow, Flink and browser ones
	PRISM_LOCATION=$(PRISM) $(PY) -m pytest -q -m "not slow and not flink and not browser"

lint: $(STAMP) ## ruff: lint and formatting check
	$(PY) -m ruff check pipeline tests bench
	$(PY) -m ruff format --check pipeline tests bench

format: $(STAMP) ## ruff: fix formatting
	$(PY) -m ruff format pipeline tests bench
	$(PY) -m ruff check --fix pipeline tests bench

bench: install flink-jar ## benchmarks, each figure beside its comparison (~30 min on 2 cores); JSON in bench/results/
	FLINK_JOB_SERVER_JAR=$(FLINK_JAR) PRISM_LOCATION=$(PRISM) $(PY) -m bench.run
	PRISM_LOCATION=$(PRISM) $(PY) -m bench.backfill

bench-throughput: install ## only the throughput figures: engines for a backfill, coalesced writes, the ledger at 50k pairs
	PRISM_LOCATION=$(PRISM) $(PY) -m bench.backfill

soak: install ## 30 minutes at 1,000 events/s on Prism: memory, freshness, outputs checked (JSON in bench/results/, PNG in out/soak/)
	PRISM_LOCATION=$(PRISM) $(PY) -m bench.soak --minutes 30 --rate 1000

soak-short: install ## the 5-minute soak
	PRISM_LOCATION=$(PRISM) $(PY) -m bench.soak --minutes 5 --rate 1000

chaos: install toxiproxy ## network faults through Toxiproxy and AWS refusing, 60 s each, with a live feed; outputs checked
	PRISM_LOCATION=$(PRISM) TOXIPROXY_SERVER=$(TOXIPROXY) $(PY) -m bench.chaos

CASES ?= 12
fuzz: install ## randomised runs on Prism (streams, flags, SIGKILLs nobody chose), each checked against the model; CASES=12, SEED=n repeats a campaign
	PRISM_LOCATION=$(PRISM) $(PY) -m bench.fuzz --cases $(CASES) $(if $(SEED),--seed $(SEED))

hostile: $(STAMP) ## hostile events: what each becomes, its cost per line and memory (the README table)
	$(PY) -m bench.hostile

# make run PLAYERS=500 EVENT_GAP=2 TIMEOUT=120 WINDOW=30 ...
PLAYERS ?= 200
EVENT_GAP ?= 4
TIMEOUT ?= 60
WINDOW ?= 10
MINUTES ?= 60
SHARDS ?= 2
RUN_FLAGS ?=

run: install ## the whole system locally: embedded AWS (moto), live simulator, pipeline on Prism, dashboard, live view (Ctrl-C stops)
	PRISM_LOCATION=$(PRISM) $(PY) -m pipeline.apps.run_local --players $(PLAYERS) --event_gap_secs $(EVENT_GAP) --timeout_secs $(TIMEOUT) \
		--window_secs $(WINDOW) --minutes $(MINUTES) --shards $(SHARDS) $(RUN_FLAGS)

# make dashboard SNAPSHOTS=s3://bucket/snapshots [ENDPOINT=http://127.0.0.1:PORT]
dashboard: $(STAMP) ## the web dashboard of what a pipeline published (SNAPSHOTS=..., ENDPOINT=...)
	$(PY) -m pipeline.apps.dashboard --snapshot_path $(SNAPSHOTS) $(if $(ENDPOINT),--aws_endpoint_url $(ENDPOINT)) $(DASHBOARD_FLAGS)

backfill: $(STAMP) ## bounded replay: simulate 30 minutes of 300 players to a file, run the pipeline over it into out/
	$(PY) -m pipeline.apps.simulator --seed 7 --players 300 --minutes 30 --out out/events.tsv
	$(PY) -m pipeline.main --input 'out/events.tsv' --snapshot_path out/snapshots --dead_letter_path out/dead_letters
	@echo "snapshots in out/snapshots (latest: out/snapshots/level_information.json)"

# Beam's Flink job server, assembled by Maven from Maven Central (flink/pom.xml, docs/flink.md),
# once per content of flink/pom.xml (a stamp beside the jar names its checksum), so that a
# fresh clone, whose pom.xml is newer than the cached jar, does not build it again. A jar
# named by FLINK_JOB_SERVER_JAR is used as it is: never built, never overwritten.
FLINK_JAR ?= $(or $(FLINK_JOB_SERVER_JAR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/level-analytics/beam-runners-flink-1.19-job-server-2.62.0.jar)
FLINK_JAR_BUILT := $(FLINK_JAR).pom-$(firstword $(shell cksum flink/pom.xml))

ifdef FLINK_JOB_SERVER_JAR
flink-jar:
	@test -f '$(FLINK_JAR)' || { echo "FLINK_JOB_SERVER_JAR=$(FLINK_JAR): no such file; unset it to build the jar"; exit 1; }
else
flink-jar: $(FLINK_JAR_BUILT) ## build Beam's Flink job server jar with Maven (once; cached under ~/.cache)

$(FLINK_JAR_BUILT):
	mvn -B -q -Dstyle.color=never -f flink/pom.xml package
	mkdir -p $(dir $(FLINK_JAR))
	cp flink/target/beam-flink-job-server.jar $(FLINK_JAR)
	touch $@
endif

test-flink: install ## only the Flink and portable-runner tests: embedded Flink, checkpoints, recovery (~5 min)
	-@$(MAKE) --no-print-directory flink-jar
	FLINK_JOB_SERVER_JAR=$(FLINK_JAR) $(PY) -m pytest -q -rs tests/test_flink.py tests/test_portable_runner.py

run-flink: $(STAMP) flink-jar ## `make run` with the pipeline on an embedded Flink (checkpoints on) instead of Prism
	$(PY) -m pipeline.apps.run_local --players $(PLAYERS) --event_gap_secs $(EVENT_GAP) --timeout_secs $(TIMEOUT) \
		--window_secs $(WINDOW) --minutes $(MINUTES) --shards $(SHARDS) $(RUN_FLAGS) \
		--runner FlinkRunner --flink_master '[local]' --flink_job_server_jar $(FLINK_JAR) --parallelism 2

clean: ## remove the virtualenv and outputs
	rm -rf $(VENV) out *.egg-info .pytest_cache .ruff_cache .hypothesis
