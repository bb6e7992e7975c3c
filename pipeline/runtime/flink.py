"""Running on Flink (and any portable runner): the Flink options, their defaults and
their checks, and where the Flink job server jar lives.

    python -m pipeline.main ... --runner FlinkRunner --flink_master [local]
    python -m pipeline.main ... --runner FlinkRunner --flink_master jobmanager:8081 \
        --flink_submit_uber_jar --environment_type EXTERNAL --environment_config localhost:50000

The FlinkRunner starts Beam's Flink job server (a Java jar) next to this process; with
`[local]` the job server runs an embedded Flink, otherwise it submits to the cluster's
JobManager (REST address). The jar comes from `make flink-jar` only: it is never
downloaded at run time.

The pinned job server: `make flink-jar` assembles Beam's Flink job server (the same main
class as Beam's published org.apache.beam:beam-runners-flink-<flink>-job-server jar)
with Maven from the runner library and its dependencies on Maven Central, at
JOB_SERVER_BEAM_VERSION for Flink FLINK_MINOR (flink/pom.xml). Why that pair: it is the
newest whose every part the project's install step could fetch by package name; Beam's
own job-server jar of the SDK's version works the same (--flink_job_server_jar). That Java
side (Beam 2.62.0) is older than the Python SDK (2.77.0); the two speak the portable Job
and Fn APIs, which this pipeline's tests exercise end to end on a real embedded Flink.
"""

import json
import logging
import os
import shutil
import socket
from urllib.parse import urlparse

from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)

from pipeline.runtime.engines import cache_dir, runner_name, size_state_cache
from pipeline.runtime.options import LevelAnalyticsOptions

_LOG = logging.getLogger(__name__)


# What `make flink-jar` builds (keep in step with flink/pom.xml and the Makefile).
JOB_SERVER_BEAM_VERSION = "2.62.0"
FLINK_MINOR = "1.19"
RUNNER_COORDINATES = f"org.apache.beam:beam-runners-flink-{FLINK_MINOR}:{JOB_SERVER_BEAM_VERSION}"
JOB_SERVICE_COORDINATES = f"org.apache.beam:beam-runners-java-job-service:{JOB_SERVER_BEAM_VERSION}"
# Beam's published job server of the pinned Python SDK's version, an alternative jar.
PUBLISHED_JOB_SERVER_COORDINATES = "org.apache.beam:beam-runners-flink-1.19-job-server:2.77.0"

JOB_SERVER_JAR_ENV = "FLINK_JOB_SERVER_JAR"
LOCAL_MASTERS = ("[local]", "[auto]")  # Beam's names for "an embedded Flink in the job server"
ENVIRONMENT_TYPES = ("LOOPBACK", "PROCESS", "EXTERNAL", "DOCKER")
DEFAULT_CHECKPOINTING_INTERVAL_MS = 60_000
# On the 2.62 job server a stage's watermark moves on only when a checkpoint finishes its
# open bundle, so values reach the tables about 4 checkpoint intervals (one per stage)
# after they are final: measured at 1,000 players live, DynamoDB p95 46.9 s at 60 s,
# 32.6 s at 5 s, 18.7 s at 1 s (floor 13.1 s), for 10% more CPU. An embedded Flink holds
# little state, so it checkpoints every second; a cluster chooses (docs/flink.md).
EMBEDDED_CHECKPOINTING_INTERVAL_MS = 1000
MASTER_CONNECT_TIMEOUT_SECS = 3.0
FINITE_RUN_SOURCE_SHUTDOWN_MS = 1000


def default_job_server_jar() -> str:
    """Where `make flink-jar` puts the jar: $FLINK_JOB_SERVER_JAR, else the user cache."""
    if os.environ.get(JOB_SERVER_JAR_ENV):
        return os.environ[JOB_SERVER_JAR_ENV]
    name = f"beam-runners-flink-{FLINK_MINOR}-job-server-{JOB_SERVER_BEAM_VERSION}.jar"
    return os.path.join(cache_dir(), name)


def missing_jar_message(path: str) -> str:
    return (
        f"no Flink job server jar at {path}: run `make flink-jar` (Maven assembles it from "
        f"{RUNNER_COORDINATES} and {JOB_SERVICE_COORDINATES} on Maven Central), or pass "
        f"--flink_job_server_jar PATH (for example Beam's own {PUBLISHED_JOB_SERVER_COORDINATES})."
    )


class FlinkCheckpointOptions(PipelineOptions):
    """Flink options that Beam's Python side does not declare (the job server does, at
    submission time); declared here so they can be checked before anything starts and
    so `--help` shows them. Names match the Java FlinkPipelineOptions."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("Flink checkpoints and recovery")
        group.add_argument(
            "--checkpointing_interval",
            type=int,
            default=None,
            help="Milliseconds between Flink checkpoints; on Beam 2.62's job server also how often "
            "each stage's watermark moves on. Default with FlinkRunner in streaming mode: "
            f"{EMBEDDED_CHECKPOINTING_INTERVAL_MS} on an embedded Flink ({', '.join(LOCAL_MASTERS)}), "
            f"{DEFAULT_CHECKPOINTING_INTERVAL_MS} on a cluster; otherwise off.",
        )
        group.add_argument(
            "--finish_bundle_before_checkpointing",
            action="store_true",
            default=None,
            help="Finish the open bundle before each checkpoint. Default with FlinkRunner in streaming "
            "mode: on (without it Beam 2.62's Flink runner holds a Python splittable DoFn's output back).",
        )
        group.add_argument(
            "--shutdown_sources_after_idle_ms",
            type=int,
            default=None,
            help="Let Flink finish a streaming job this long after its sources went idle; checkpoints "
            "stop then. Default with checkpointing: never (the job runs until cancelled).",
        )
        bundles = parser.add_argument_group("Flink bundles")
        bundles.add_argument(
            "--max_bundle_size",
            type=int,
            default=None,
            help="Elements per bundle of a Python step at most. Default: Flink runner's (1000).",
        )
        bundles.add_argument(
            "--max_bundle_time_mills",
            type=int,
            default=None,
            help="Milliseconds a bundle of a Python step stays open at most. Default: Flink runner's (1000).",
        )
        group.add_argument(
            "--number_of_execution_retries",
            type=int,
            default=None,
            help="How often Flink restarts the job from its latest checkpoint after a failure. "
            "Default: Flink's restart strategy.",
        )
        group.add_argument(
            "--execution_retry_delay",
            type=int,
            default=None,
            help="Milliseconds between those restarts. Default: Flink's.",
        )
        group.add_argument(
            "--state_backend",
            default=None,
            choices=("rocksdb", "filesystem"),
            help="Flink state backend (rocksdb for more players than fit in the heap). Default: Flink's.",
        )
        group.add_argument(
            "--state_backend_storage_path",
            default=None,
            help="Where checkpoints go, e.g. s3://bucket/checkpoints or file:///data/checkpoints. "
            "Required with --state_backend. Default: the JobManager's memory.",
        )
        group.add_argument(
            "--externalized_checkpoints_enabled",
            action="store_true",
            default=None,
            help="Keep completed checkpoints in --state_backend_storage_path after the job stops, so a "
            "new submission can start from one with --savepoint_path. Default: off.",
        )
        group.add_argument(
            "--retain_externalized_checkpoints_on_cancellation",
            action="store_true",
            default=None,
            help="With --externalized_checkpoints_enabled: keep them when the job is cancelled too.",
        )
        group.add_argument(
            "--savepoint_path",
            default=None,
            help="Start from this savepoint (or retained checkpoint): the upgrade path. Default: none.",
        )
        group.add_argument(
            "--allow_non_restored_state",
            action="store_true",
            default=None,
            help="With --savepoint_path: let the upgraded job drop state of steps it no longer has.",
        )


def is_flink(options: PipelineOptions) -> bool:
    return runner_name(options) in ("FlinkRunner", "flink")


def is_portable(options: PipelineOptions) -> bool:
    return runner_name(options) in ("PortableRunner", "portable")


def master_address(flink_master: str) -> tuple[str, int] | None:
    """(host, port) of a cluster master given as host:port or http(s)://host:port."""
    text = flink_master.strip()
    parsed = urlparse(text if "://" in text else f"http://{text}")
    try:
        port = parsed.port
    except ValueError:
        return None
    if not parsed.hostname or port is None:
        return None
    return parsed.hostname, port


def can_connect(host: str, port: int, timeout_secs: float = MASTER_CONNECT_TIMEOUT_SECS) -> str | None:
    """None when a TCP connection opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_secs):
            return None
    except OSError as error:
        return str(error) or type(error).__name__


def environment_errors(portable: PortableOptions, local_master: bool) -> list:
    """What the SDK harness environment needs, as messages saying what to change."""
    errors = []
    kind = (portable.environment_type or "").upper()
    config = portable.environment_config
    extra = dict(option.split("=", 1) for option in (portable.environment_options or []) if "=" in option)
    if kind and kind not in ENVIRONMENT_TYPES:
        errors.append(
            f"--environment_type {portable.environment_type}: use one of {', '.join(ENVIRONMENT_TYPES)}."
        )
    if kind == "LOOPBACK" and not local_master:
        errors.append(
            "--environment_type LOOPBACK runs the Python workers inside this process at localhost, which the "
            "cluster's task managers cannot reach: use EXTERNAL (a worker pool beside each task manager), "
            "PROCESS or DOCKER (see docs/flink.md), or --flink_master [local]."
        )
    if kind == "DOCKER" and local_master and shutil.which("docker") is None:
        errors.append(
            "--environment_type DOCKER with --flink_master [local] needs `docker` on this machine, and there "
            "is none: leave --environment_type out (LOOPBACK) or use PROCESS."
        )
    if kind == "EXTERNAL" and not (config or extra.get("external_service_address")):
        errors.append(
            "--environment_type EXTERNAL needs the worker pool's address: --environment_config host:50000 "
            "(a `python -m apache_beam.runners.worker.worker_pool_main --service_port 50000` beside each "
            "task manager)."
        )
    if kind == "PROCESS":
        command = extra.get("process_command")
        if config and not command:
            try:
                command = json.loads(config).get("command")
            except (ValueError, AttributeError):
                command = None
        if not command:
            errors.append(
                "--environment_type PROCESS needs the SDK harness boot command: "
                '--environment_config \'{"command": "/opt/apache/beam/boot"}\' '
                "(or --environment_options process_command=/opt/apache/beam/boot)."
            )
    return errors


def runner_option_errors(options: PipelineOptions) -> list:
    """Every problem with the runner options, each saying what to change (empty for
    runners other than FlinkRunner and PortableRunner)."""
    errors = []
    portable = options.view_as(PortableOptions)
    checkpoints = options.view_as(FlinkCheckpointOptions)
    if is_portable(options) and not portable.job_endpoint:
        errors.append(
            "--runner PortableRunner needs --job_endpoint host:port of a running Beam job server "
            "(e.g. the Flink job server, see docs/flink.md), or use --runner FlinkRunner."
        )
    if not is_flink(options):
        return errors

    flink = options.view_as(FlinkRunnerOptions)
    master = flink.flink_master.strip()
    local_master = master in LOCAL_MASTERS
    if not local_master:
        address = master_address(master)
        if address is None:
            errors.append(
                f"--flink_master {master}: give [local] (an embedded Flink) or the JobManager's REST "
                "address as host:port, e.g. jobmanager:8081."
            )
        else:
            why = can_connect(*address)
            if why:
                errors.append(
                    f"--flink_master {master} is not reachable ({why}): start the cluster, or check the "
                    "JobManager's REST address (port 8081 by default), or use --flink_master [local]."
                )
    errors += environment_errors(portable, local_master)

    jar = flink.flink_job_server_jar or default_job_server_jar()
    if urlparse(jar).scheme in ("http", "https", "gs", "s3"):
        errors.append(
            f"--flink_job_server_jar {jar}: give a local file (from `make flink-jar`); the job server is "
            "never downloaded at run time."
        )
    elif not os.path.isfile(jar):
        errors.append(missing_jar_message(jar))
    if flink.flink_submit_uber_jar and local_master:
        errors.append(
            "--flink_submit_uber_jar uploads the job to a cluster's REST address: give --flink_master "
            "host:port, or leave it out with [local]."
        )

    for name in ("parallelism", "max_parallelism"):
        value = getattr(flink, name)
        if value is not None and value != -1 and value <= 0:
            errors.append(f"--{name} must be positive (or left out for Flink's default), not {value}.")
    if checkpoints.checkpointing_interval is not None and checkpoints.checkpointing_interval <= 0:
        errors.append(
            f"--checkpointing_interval must be a positive number of milliseconds, not "
            f"{checkpoints.checkpointing_interval}."
        )
    if checkpoints.state_backend and not checkpoints.state_backend_storage_path:
        errors.append(
            f"--state_backend {checkpoints.state_backend} needs --state_backend_storage_path "
            "(e.g. s3://bucket/checkpoints or file:///data/checkpoints)."
        )
    if checkpoints.state_backend_storage_path and not checkpoints.state_backend:
        errors.append(
            "--state_backend_storage_path is used only with --state_backend rocksdb (or filesystem)."
        )
    if checkpoints.externalized_checkpoints_enabled and not checkpoints.state_backend_storage_path:
        errors.append(
            "--externalized_checkpoints_enabled needs durable checkpoints: --state_backend rocksdb "
            "--state_backend_storage_path s3://bucket/checkpoints."
        )
    if checkpoints.allow_non_restored_state and not checkpoints.savepoint_path:
        errors.append("--allow_non_restored_state only applies with --savepoint_path.")
    return errors


def apply_runner_defaults(options: PipelineOptions) -> None:
    """Fill what FlinkRunner needs and the user left out: the jar from `make flink-jar`,
    the in-process SDK harness for an embedded Flink, and checkpoints and the SDK
    harness's state cache when streaming.
    Call after runner_option_errors found nothing, and after `streaming` is set."""
    if not is_flink(options):
        return
    flink = options.view_as(FlinkRunnerOptions)
    if not flink.flink_job_server_jar:
        flink.flink_job_server_jar = default_job_server_jar()
    portable = options.view_as(PortableOptions)
    if flink.flink_master.strip() in LOCAL_MASTERS and not portable.environment_type:
        portable.environment_type = "LOOPBACK"
    checkpoints = options.view_as(FlinkCheckpointOptions)
    if not options.view_as(StandardOptions).streaming:
        return
    if checkpoints.checkpointing_interval is None:
        embedded = flink.flink_master.strip() in LOCAL_MASTERS
        checkpoints.checkpointing_interval = (
            EMBEDDED_CHECKPOINTING_INTERVAL_MS if embedded else DEFAULT_CHECKPOINTING_INTERVAL_MS
        )
    if checkpoints.finish_bundle_before_checkpointing is None:
        checkpoints.finish_bundle_before_checkpointing = True
    # Flink gives the SDK harness cache tokens, so user state read once stays cached
    # across bundles (Beam's own design; off unless sized): no state read per bundle.
    size_state_cache(options)
    finite = options.view_as(LevelAnalyticsOptions).stop_when_idle_secs is not None
    if finite and checkpoints.shutdown_sources_after_idle_ms is None:
        # With checkpoints on, Beam's Flink runner keeps sources alive forever, so a run
        # meant to stop would never end. Letting them stop ends Flink checkpoints too; a
        # finite run restarts from its DynamoDB checkpoint instead (see pipeline.main).
        checkpoints.shutdown_sources_after_idle_ms = FINITE_RUN_SOURCE_SHUTDOWN_MS
        _LOG.warning(
            "a run that stops by itself on Flink: its sources shut down after %d ms, and Flink "
            "checkpoints stop with them (--shutdown_sources_after_idle_ms to choose)",
            FINITE_RUN_SOURCE_SHUTDOWN_MS,
        )
