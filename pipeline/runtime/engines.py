"""Which engine runs the pipeline, with which settings, checked before anything starts.

Engines:
- Prism (`PrismRunner`, Beam's own local engine, the DirectRunner's default since 2.68)
  runs every stream: one pipeline, forever, with live watermarks. Always with the
  experiment `prism_disable_sdf_split` (see PRISM_EXPERIMENT), and with user state
  cached across bundles in its SDK worker (keep_state_in_cache).
- The FnApiRunner (Beam's batch engine) runs bounded replays of files, on every core:
  one worker process per core (BATCH_RUNNING_MODE), each reading and parsing its share of
  the files' chunks (pipeline.sources.files), the runner shuffling between them; an
  input under MULTI_PROCESS_FROM_BYTES runs in one process (starting the workers costs
  more than they save there). Chosen by measurement (bench/backfill.py, README
  "Performance"): faster than one process, and than Prism, whose one Python worker
  does all the work while the Go runner moves every element between stages. It cannot
  run a stream live: it holds a splittable source's watermark until the source ends.
  Named explicitly (--runner FnApiRunner), it runs as its own flags say: one process
  unless --direct_num_workers.
- Flink (`FlinkRunner`) when one machine is not enough (below).

`--runner DirectRunner` (what Beam users type), or no --runner, picks the engine for the
mode; a stream never runs on an engine that cannot publish live.

Flink options, checks and defaults: pipeline.runtime.flink.
"""

import logging
import os

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.version import __version__ as BEAM_SDK_VERSION

from pipeline.runtime import beam_patches
from pipeline.runtime.options import LevelAnalyticsOptions

_LOG = logging.getLogger(__name__)

# --- Engines -----------------------------------------------------------------------------

STREAM_ENGINE = "PrismRunner"
BATCH_ENGINE = "FnApiRunner"
# How BATCH_ENGINE runs a bounded replay picked for the user: a worker process per core,
# from an input of MULTI_PROCESS_FROM_BYTES on. Starting the workers takes about 3 s
# (each imports Beam); on 2 cores a replay of 175 MB took 25% less time with them, so
# below some 64 MB they cost more than they save.
BATCH_RUNNING_MODE = "multi_processing"
MULTI_PROCESS_FROM_BYTES = 64 << 20
RUN_FOREVER_SECS = 10 * 365 * 86400  # Prism's job_server_timeout: the deadline of a run
# Beam's names for "pick a local engine for me".
LOCAL_RUNNER_ALIASES = ("DirectRunner", "SwitchingDirectRunner", "")
# In-process engines that cannot run a stream live (watermark held until the source ends).
NOT_LIVE_ENGINES = ("FnApiRunner", "BundleBasedDirectRunner")

# Prism splits bundles of a splittable DoFn on its own; with event-time timers
# downstream, its split drops the split-off timers' watermark holds (apache/beam#35771,
# Prism logs "Unexpected split on a bundle with timers") and counts come out wrong:
# measured on a 2-shard backlog, 0 of 46 windows equal to the model without it, 46 of 46
# with it. The Kinesis reader checkpoints by itself (defer_remainder), so it needs no
# runner-initiated split. tests/test_engines.py::test_dense_backlog_on_prism shows it.
PRISM_EXPERIMENT = "prism_disable_sdf_split"
PRISM_LOCATION_ENV = "PRISM_LOCATION"
# The SDK worker's state cache on a stream (Prism, Flink). It weighs values as Python
# objects (a player's state is about 300 bytes pickled, some kilobytes in memory; the
# ledger a few MB at 50k transition pairs); past it, the least recent are evicted and
# read again: slower only.
STATE_CACHE_MB = 256
PRISM_PACKAGE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
# The one fix `make prism` applies to it (docs/upstream/prism-cleared-state.md).
PRISM_PATCH = "patches/prism-forget-cleared-state.patch"


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name, whatever form it was given in ("" when none)."""
    runner = options.view_as(StandardOptions).runner or ""
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1]


def default_prism_location() -> str:
    """Where `make prism` builds Prism: $PRISM_LOCATION, else the user cache. "patched":
    the pinned version with PRISM_PATCH applied (the Makefile's `prism` target)."""
    if os.environ.get(PRISM_LOCATION_ENV):
        return os.environ[PRISM_LOCATION_ENV]
    return os.path.join(cache_dir(), f"prism-{BEAM_SDK_VERSION}-patched", "prism")


def missing_prism_message(path: str) -> str:
    return (
        f"no Prism binary at {path}: run `make prism` (builds {PRISM_PACKAGE}@v{BEAM_SDK_VERSION} with "
        f"{PRISM_PATCH} applied, with Go from the Go module proxy, about 3 minutes), or pass "
        f"--prism_location PATH. Without Go, --prism_location "
        f"https://github.com/apache/beam/releases/tag/v{BEAM_SDK_VERSION} lets Beam download its release "
        "binary where github.com is reachable (without that fix: its memory then grows by an entry per "
        "player who ever left)."
    )


def engine_errors(options: PipelineOptions, streaming: bool) -> list:
    """What stops the chosen engine from running this pipeline, each saying what to change."""
    name = runner_name(options)
    if streaming and name in NOT_LIVE_ENGINES:
        return [
            f"--runner {name} cannot run a stream live (it holds the source's watermark until the "
            "source ends, so nothing would be published): leave --runner out, or use PrismRunner "
            "(the default for streams) or FlinkRunner."
        ]
    if name == STREAM_ENGINE or (streaming and name in LOCAL_RUNNER_ALIASES):
        location = options.view_as(PrismRunnerOptions).prism_location
        if not location:
            location = default_prism_location()
            if not os.path.isfile(location):
                return [missing_prism_message(location)]
    return []


def choose_engine(options: PipelineOptions, streaming: bool) -> None:
    """Set the engine for the mode (see the module docstring) and Prism's settings."""
    standard = options.view_as(StandardOptions)
    name = runner_name(options)
    if name in LOCAL_RUNNER_ALIASES:
        standard.runner = STREAM_ENGINE if streaming else BATCH_ENGINE
        name = standard.runner
        if not streaming:
            use_every_core(options, options.view_as(LevelAnalyticsOptions).input)
    if name != STREAM_ENGINE:
        return
    prism = options.view_as(PrismRunnerOptions)
    if not prism.prism_location:
        prism.prism_location = default_prism_location()
    debug = options.view_as(DebugOptions)
    if not debug.lookup_experiment(PRISM_EXPERIMENT):
        debug.add_experiment(PRISM_EXPERIMENT)
    if "job_server_timeout" not in options.get_all_options(drop_default=True):
        # Beam's PortableRunner gives the job's state stream from Prism a deadline of
        # --job_server_timeout (300 s by default): a run longer than that would end with
        # DEADLINE_EXCEEDED. A stream runs until it is stopped.
        options.view_as(PortableOptions).job_server_timeout = RUN_FOREVER_SECS
    keep_state_in_cache(options)


def keep_state_in_cache(options: PipelineOptions) -> None:
    """Prism: user state cached across bundles in its SDK worker (beam_patches, 3.), with
    a cache of STATE_CACHE_MB unless --max_cache_memory_usage_mb is given. Only for
    the worker this process runs (LOOPBACK, Prism's default): one in another process
    would not have the patch, and without it caches nothing, which is slower, not wrong."""
    environment = options.view_as(PortableOptions).environment_type
    if environment not in (None, "", "LOOPBACK"):
        return
    if not options.view_as(DebugOptions).lookup_experiment(PRISM_EXPERIMENT):
        return  # a split bundle frees its keys early: the constant token would not be sound
    size_state_cache(options)
    beam_patches.cache_state_on_prism()


def size_state_cache(options: PipelineOptions) -> None:
    """The SDK worker's state cache: STATE_CACHE_MB unless --max_cache_memory_usage_mb
    is given (Beam's default, 0, turns it off)."""
    if "max_cache_memory_usage_mb" not in options.get_all_options(drop_default=True):
        options.view_as(WorkerOptions).max_cache_memory_usage_mb = STATE_CACHE_MB


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def input_bytes(file_pattern: str | None) -> int | None:
    """The size of the local files a pattern matches; None for a remote file system
    (its options are not set yet: a replay from there is taken to be big)."""
    if not file_pattern:
        return 0
    if "://" in file_pattern:
        return None
    try:
        return sum(m.size_in_bytes for r in FileSystems.match([file_pattern]) for m in r.metadata_list)
    except Exception:  # noqa: BLE001 - no match: the source says so, with its own message
        return 0


def use_every_core(options: PipelineOptions, file_pattern: str | None) -> None:
    """BATCH_ENGINE with a worker process per core for an input of MULTI_PROCESS_FROM_BYTES
    or more, unless the flags say how it runs (--direct_num_workers,
    --direct_running_mode) or there is one core only."""
    direct = options.view_as(DirectOptions)
    chosen = options.get_all_options(drop_default=True)
    if "direct_num_workers" in chosen or "direct_running_mode" in chosen or cores() < 2:
        return
    size = input_bytes(file_pattern)
    if size is not None and size < MULTI_PROCESS_FROM_BYTES:
        return
    direct.direct_num_workers = cores()
    direct.direct_running_mode = BATCH_RUNNING_MODE


def cache_dir() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "level-analytics")
