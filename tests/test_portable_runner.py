"""Portable submission without any jar: the pipeline sent through Beam's Job API to
Beam's own Python job service (local_job_service_main, a subprocess), its workers in
this process (LOOPBACK), bounded over files and streaming from moto's Kinesis; outputs
equal the reference model. Also: the runner options' checks and defaults
(pipeline/runtime/engines.py), and the step labels Flink uses as operator ids."""

import json
import re
import socket
import subprocess
import sys
import time

import apache_beam as beam
import boto3
import pytest
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
    WorkerOptions,
)

from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, simulate, write_lines
from pipeline.main import build_pipeline, parse_options, run
from pipeline.runtime import flink as runners
from pipeline.runtime.engines import STATE_CACHE_MB
from pipeline.testing.aws_server import free_port, make_stream
from pipeline.testing.outputs import assert_history_equals_model, read_history
from pipeline.testing.reference_model import model_transition_totals


def wait_for_port(port: int, process, timeout_secs: float = 60.0):
    deadline = time.monotonic() + timeout_secs
    while runners.can_connect("127.0.0.1", port, timeout_secs=0.5):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, f"the job service did not listen on {port}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def job_endpoint():
    """Beam's Python job service in its own process, as a remote job server would be."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process)
        yield f"localhost:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def portable_args(job_endpoint):
    return ["--runner=PortableRunner", f"--job_endpoint={job_endpoint}", "--environment_type=LOOPBACK"]


def dead_letters(root):
    return [json.loads(line) for path in root.rglob("*.jsonl") for line in path.read_text().splitlines()]


def test_bounded_replay_through_the_job_api_matches_the_model(job_endpoint, tmp_path):
    stream = simulate(SimulationSettings(seed=13, players=80, duration_secs=900))
    write_lines(str(tmp_path / "events.tsv"), stream.lines)
    out, bad = tmp_path / "out", tmp_path / "bad"

    result = run(
        [
            f"--input={tmp_path}/events.tsv",
            f"--snapshot_path={out}",
            f"--dead_letter_path={bad}",
            *portable_args(job_endpoint),
        ]
    )

    assert type(result).__module__.endswith("portable_runner")  # it went through the Job API
    assert_history_equals_model(read_history(str(out)), stream.observations, 300, 60)
    assert len(dead_letters(bad)) == stream.malformed > 0


def test_stream_through_the_job_api_matches_the_model(job_endpoint, moto_endpoint, tmp_path):
    stream = simulate(
        SimulationSettings(seed=17, players=40, duration_secs=600, max_out_of_orderness_secs=10)
    )
    client = make_stream(moto_endpoint, "portable-good", shards=2)
    put_records(client, "portable-good", stream.lines)
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")
    out, bad = tmp_path / "out", tmp_path / "bad"

    run(
        [
            "--stream_name=portable-good",
            f"--aws_endpoint_url={moto_endpoint}",
            "--initial_position=TRIM_HORIZON",
            "--stop_when_idle_secs=3",
            f"--snapshot_path={out}",
            f"--dead_letter_path={bad}",
            "--write_dynamodb",
            "--create_tables",
            # This test's own tables: the moto server is shared by the whole session.
            "--level_table=portable-levels",
            "--transitions_table=portable-transitions",
            "--progress_table=portable-progress",
            *portable_args(job_endpoint),
        ]
    )

    assert_history_equals_model(read_history(str(out)), stream.observations, 300, 60)
    assert len(dead_letters(bad)) == stream.malformed
    totals = {
        item["transitionLevels"]["S"]: int(item["count"]["N"])
        for item in dynamodb.scan(TableName="portable-transitions")["Items"]
    }
    assert totals == model_transition_totals(stream.observations)
    levels = dynamodb.scan(TableName="portable-levels")["Items"]
    assert levels and {int(item["playerCount"]["N"]) for item in levels} == {0}


# The runner options: checks and defaults.

SOURCE = ["--input=events.tsv", "--snapshot_path=out"]


@pytest.fixture
def jar(tmp_path, monkeypatch):
    """A file where the job server jar is looked for (its content is not read here)."""
    path = tmp_path / "job-server.jar"
    path.write_bytes(b"PK")
    monkeypatch.setenv(runners.JOB_SERVER_JAR_ENV, str(path))
    return str(path)


@pytest.fixture
def listening_port():
    """A port on loopback that accepts connections, standing in for a JobManager."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def errors_for(*flags):
    return runners.runner_option_errors(PipelineOptions([*SOURCE, *flags]))


def test_flink_on_an_embedded_cluster_with_the_jar_is_accepted(jar):
    assert errors_for("--runner=FlinkRunner", "--flink_master=[local]") == []
    assert errors_for("--runner=FlinkRunner") == []  # Beam's default master, [auto], is local too
    assert errors_for("--runner=FnApiRunner") == []


def test_flink_on_a_reachable_cluster_with_a_worker_pool_is_accepted(jar, listening_port):
    flags = (
        "--runner=FlinkRunner",
        f"--flink_master=127.0.0.1:{listening_port}",
        "--environment_type=EXTERNAL",
        "--environment_config=localhost:50000",
    )
    assert errors_for(*flags) == []


def test_a_missing_job_server_jar_says_make_flink_jar_and_the_coordinates(tmp_path, monkeypatch):
    monkeypatch.setenv(runners.JOB_SERVER_JAR_ENV, str(tmp_path / "absent.jar"))
    [message] = errors_for("--runner=FlinkRunner", "--flink_master=[local]")
    assert "make flink-jar" in message and str(tmp_path / "absent.jar") in message
    assert runners.RUNNER_COORDINATES in message and runners.JOB_SERVICE_COORDINATES in message
    assert "Beam's own org.apache.beam:beam-runners-flink-1.19-job-server:2.77.0)" in message


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--flink_job_server_jar=https://example.org/job-server.jar"], "never downloaded at run time"),
        (["--flink_master=jobmanager"], "give [local] (an embedded Flink) or the JobManager's REST address"),
        (["--environment_type=DOCKER"], "needs `docker` on this machine"),
        (["--environment_type=EXTERNAL"], "needs the worker pool's address"),
        (["--environment_type=PROCESS"], "needs the SDK harness boot command"),
        (["--environment_type=PROCESS", "--environment_config={}"], "needs the SDK harness boot command"),
        (["--environment_type=SUBPROCESS"], "use one of LOOPBACK, PROCESS, EXTERNAL, DOCKER"),
        (["--checkpointing_interval=0"], "--checkpointing_interval must be a positive number"),
        (["--parallelism=0"], "--parallelism must be positive"),
        (["--state_backend=rocksdb"], "needs --state_backend_storage_path"),
        (["--state_backend_storage_path=s3://b/c"], "used only with --state_backend"),
        (["--externalized_checkpoints_enabled"], "needs durable checkpoints"),
        (["--allow_non_restored_state"], "only applies with --savepoint_path"),
        (["--flink_submit_uber_jar"], "uploads the job to a cluster's REST address"),
    ],
)
def test_bad_flink_options_say_what_to_change(jar, monkeypatch, flags, message):
    monkeypatch.setattr(runners.shutil, "which", lambda name: None)  # as on this machine: no docker
    errors = errors_for("--runner=FlinkRunner", *flags)
    assert len(errors) == 1 and message in errors[0], errors


def test_an_unreachable_cluster_master_is_reported(jar):
    closed_port = free_port()  # bound and released: nothing listens there
    [message] = errors_for("--runner=FlinkRunner", f"--flink_master=127.0.0.1:{closed_port}")
    assert f"--flink_master 127.0.0.1:{closed_port} is not reachable" in message


def test_loopback_workers_cannot_serve_a_remote_cluster(jar, listening_port):
    flags = (
        "--runner=FlinkRunner",
        f"--flink_master=http://127.0.0.1:{listening_port}",
        "--environment_type=LOOPBACK",
    )
    [message] = errors_for(*flags)
    assert "LOOPBACK" in message and "EXTERNAL" in message


def test_portable_runner_needs_a_job_endpoint():
    [message] = errors_for("--runner=PortableRunner")
    assert "--job_endpoint" in message


def test_pipeline_main_accepts_the_flink_flags(jar):
    """They are ours (FlinkCheckpointOptions), so pipeline.main's unknown-flag check passes."""
    options = parse_options(
        [*SOURCE, "--runner=FlinkRunner", "--checkpointing_interval=5000", "--savepoint_path=/sp"]
    )
    checkpoints = options.view_as(runners.FlinkCheckpointOptions)
    assert checkpoints.checkpointing_interval == 5000 and checkpoints.savepoint_path == "/sp"


def test_defaults_fill_the_jar_loopback_and_checkpoints_when_streaming(jar):
    options = PipelineOptions(
        ["--stream_name=s", "--snapshot_path=out", "--runner=FlinkRunner", "--streaming"]
    )
    runners.apply_runner_defaults(options)
    assert options.view_as(FlinkRunnerOptions).flink_job_server_jar == jar
    assert options.view_as(PortableOptions).environment_type == "LOOPBACK"
    checkpoints = options.view_as(runners.FlinkCheckpointOptions)
    # Each stage's watermark moves on at checkpoints (2.62 job server): often, when embedded.
    assert checkpoints.checkpointing_interval == runners.EMBEDDED_CHECKPOINTING_INTERVAL_MS
    assert checkpoints.finish_bundle_before_checkpointing is True
    # Flink gives cache tokens: user state stays in the SDK harness's cache across bundles.
    assert options.view_as(WorkerOptions).max_cache_memory_usage_mb == STATE_CACHE_MB

    assert checkpoints.shutdown_sources_after_idle_ms is None  # a live job runs until stopped

    finite = PipelineOptions(
        [
            "--stream_name=s",
            "--snapshot_path=out",
            "--runner=FlinkRunner",
            "--streaming",
            "--stop_when_idle_secs=3",
        ]
    )
    runners.apply_runner_defaults(finite)
    shutdown = finite.view_as(runners.FlinkCheckpointOptions).shutdown_sources_after_idle_ms
    assert shutdown == runners.FINITE_RUN_SOURCE_SHUTDOWN_MS

    cluster = PipelineOptions(
        ["--stream_name=s", "--snapshot_path=out", "--runner=FlinkRunner", "--streaming"]
        + ["--flink_master=jobmanager:8081"]
    )
    runners.apply_runner_defaults(cluster)
    interval = cluster.view_as(runners.FlinkCheckpointOptions).checkpointing_interval
    assert interval == runners.DEFAULT_CHECKPOINTING_INTERVAL_MS

    bounded = PipelineOptions([*SOURCE, "--runner=FlinkRunner", "--flink_master=jobmanager:8081"])
    runners.apply_runner_defaults(bounded)
    assert bounded.view_as(PortableOptions).environment_type is None  # Beam's default for a cluster
    assert bounded.view_as(runners.FlinkCheckpointOptions).checkpointing_interval is None

    other = PipelineOptions([*SOURCE, "--runner=FnApiRunner"])
    runners.apply_runner_defaults(other)
    assert other.view_as(FlinkRunnerOptions).flink_job_server_jar is None


# Step labels: Flink names its operators (and keys their state in checkpoints and
# savepoints) by them, so they must be explicit and the same on every build.

CORE_STEPS = {"ReadKinesis", "ParseEvents", "TrackPlayers", "CountPerInterval", "KeepLedger"}
GENERATED_LABEL = re.compile(r"<lambda|<function| at 0x|\.py:\d+")


def step_labels():
    options = PipelineOptions(
        ["--stream_name=s", "--snapshot_path=out", "--dead_letter_path=bad", "--write_dynamodb"]
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    transforms = pipeline.to_runner_api().components.transforms
    return {(transform_id, t.unique_name) for transform_id, t in transforms.items() if t.unique_name}


def test_step_labels_are_explicit_and_stable():
    labels = step_labels()
    assert labels == step_labels()
    names = {name for _, name in labels}
    assert CORE_STEPS <= {name.split("/")[0] for name in names}
    assert not [name for name in names if GENERATED_LABEL.search(name)]
