"""The pipeline on a real (embedded) Flink, through Beam's Flink job server:

* the bounded replay through `python -m pipeline.main --runner FlinkRunner` (the job
  server started and stopped by Beam, as `make run-flink` does);
* the streaming scenario of test_kinesis_end_to_end (moto's Kinesis on loopback, 2
  shards, shuffled arrival, duplicates, bad lines) with parallelism 2 and a checkpoint
  every second;
* the same stream with a failure injected after a completed checkpoint: Flink restores
  the job from that checkpoint, and the outputs are still exactly the model;
* a streaming run told to stop (--stop_when_idle_secs), which must end by itself.

The checkpointed runs check their outputs, dead-letter objects included, while the job
is still running: a stream's windows are written as it goes, not when it ends.

With checkpointing on, Beam's Flink runner keeps a streaming job running after its input
is done (so checkpoints keep working), as a live job would: the checkpointed tests wait
until the outputs equal the model, then cancel the job. The reader still stops once the
stream is drained (--stop_when_idle_secs), which releases its watermark. A stream that
goes quiet and is not stopped has its watermark moved with the clock, on Flink too (the
quiet-stream test).

The job server jar comes from `make flink-jar` ($FLINK_JOB_SERVER_JAR, else the user cache;
see pipeline/runtime/engines.py). Without it every test here is skipped, naming the Maven
coordinates the jar is built from.
"""

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import apache_beam as beam
import boto3
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.flink_runner import FlinkJarJobServer
from apache_beam.runners.runner import PipelineState

from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, simulate, write_lines
from pipeline.main import build_pipeline, parse_options, prepare_restart
from pipeline.rules.times import iso_utc, parse_timestamp_ms
from pipeline.runtime import flink as runners
from pipeline.runtime.options import LevelAnalyticsOptions
from pipeline.sources.kinesis import ReadKinesisRecords
from pipeline.testing.aws_server import free_port, make_stream
from pipeline.testing.outputs import assert_history_equals_model, read_history
from pipeline.testing.processes import command_line, descendants
from pipeline.testing.reference_model import (
    model_transition_totals,
    model_transitions,
    players_at,
    snapshot_as_files,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAR = runners.default_job_server_jar()
pytestmark = [
    pytest.mark.flink,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isfile(JAR), reason=runners.missing_jar_message(JAR)),
]

CHECKPOINT_MS = 1000
# Flink's own default with checkpointing: the sources never shut down, so checkpoints go
# on through the whole run (pipeline.main lets them go for runs that stop by themselves).
KEEP_SOURCES_ALIVE = "--shutdown_sources_after_idle_ms=9223372036854775807"
OUTPUT_DEADLINE_SECS = 420  # the machine is shared: a run takes about 2 minutes here
FAILED_STATES = (PipelineState.FAILED, PipelineState.CANCELLED, PipelineState.STOPPED)
RESTORED = re.compile(r"Restoring job (\w+) from Checkpoint (\d+)")
COMPLETED = re.compile(r"Completed checkpoint (\d+) for job (\w+)")


class JobServerLog(logging.Handler):
    """Keeps the job server's lines about checkpoints (Beam logs its output as INFO
    under the logger 'FlinkJarJobServer'); can drop a file when a checkpoint completes."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []
        self.on_checkpoint = None  # callable(job_id, checkpoint_id), set by a test
        self.jobs = set()  # every job that completed a checkpoint: the server outlives tests

    def emit(self, record):
        line = record.getMessage()
        if "heckpoint" not in line:
            return
        self.lines.append(line)
        completed = COMPLETED.search(line)
        if completed:
            self.jobs.add(completed.group(2))
            if self.on_checkpoint:
                self.on_checkpoint(completed.group(2), int(completed.group(1)))


@pytest.fixture(scope="module")
def flink_job_server():
    """One Flink job server for the streaming tests, started by Beam's own class as
    FlinkRunner starts it (each job gets its own embedded Flink); stopped at the end."""
    log = JobServerLog()
    logger = logging.getLogger("FlinkJarJobServer")
    saved = (logger.level, logger.propagate)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # keep Flink's INFO chatter out of the test report
    logger.addHandler(log)
    port = free_port()
    server = FlinkJarJobServer(
        PipelineOptions([f"--flink_job_server_jar={JAR}", "--flink_master=[local]", f"--job_port={port}"])
    )
    server.start()  # returns once the job service answers
    try:
        yield f"localhost:{port}", log
    finally:
        server.stop()
        logger.removeHandler(log)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def streaming_args(stream_name, endpoint, out, bad, job_endpoint):
    return [
        f"--stream_name={stream_name}",
        f"--aws_endpoint_url={endpoint}",
        "--aws_region=us-east-1",
        "--initial_position=TRIM_HORIZON",
        "--max_out_of_orderness_secs=10",
        "--stop_when_idle_secs=5",
        f"--snapshot_path={out}",
        f"--dead_letter_path={bad}",
        "--write_dynamodb",
        "--create_tables",
        # Tables of this test's own: the moto server is shared by the whole session.
        f"--level_table={stream_name}-levels",
        f"--transitions_table={stream_name}-transitions",
        f"--progress_table={stream_name}-progress",
        "--runner=FlinkRunner",
        "--flink_master=[local]",
        f"--flink_job_server_jar={JAR}",
        f"--job_endpoint={job_endpoint}",
        "--environment_type=LOOPBACK",
        "--parallelism=2",
        f"--checkpointing_interval={CHECKPOINT_MS}",
    ]


def checked_options(argv) -> PipelineOptions:
    """pipeline.main's options plus the runner checks and defaults, as main applies them."""
    options = parse_options(argv)
    errors = runners.runner_option_errors(options)
    assert not errors, errors
    runners.apply_runner_defaults(options)
    return options


def new_stream(endpoint, name, seed):
    """A generated stream put on a fresh 2-shard Kinesis stream, and fresh tables (the
    moto server lives for the whole session)."""
    stream = simulate(
        SimulationSettings(seed=seed, players=60, duration_secs=900, max_out_of_orderness_secs=10)
    )
    make_stream(endpoint, name, shards=2)
    put_records(boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1"), name, stream.lines)
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    for table in dynamodb.list_tables()["TableNames"]:
        dynamodb.delete_table(TableName=table)
    return stream


def assert_outputs_equal_model(stream, out, bad, endpoint, stream_name):
    """Snapshots window by window, dead letters, DynamoDB totals, every level back at 0."""
    assert (out / "history" / "levels").is_dir(), "no snapshot yet"
    assert_history_equals_model(read_history(str(out)), stream.observations, 300, 60)
    dead = [json.loads(line) for path in bad.rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(dead) == stream.malformed and not [d for d in dead if d["reason"] == "late"]
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    transitions = dynamodb.scan(TableName=f"{stream_name}-transitions")["Items"]
    totals = {item["transitionLevels"]["S"]: int(item["count"]["N"]) for item in transitions}
    assert totals == model_transition_totals(stream.observations)
    levels = dynamodb.scan(TableName=f"{stream_name}-levels")["Items"]
    assert levels and {int(item["playerCount"]["N"]) for item in levels} == {0}


def run_until_outputs_match(pipeline, check, deadline_secs=OUTPUT_DEADLINE_SECS) -> float:
    """Starts the streaming job, waits until `check` passes (twice, 3 s apart, so the
    outputs have settled), cancels the job; returns the seconds it took. Raises the last
    mismatch if the deadline passes, or at once if the job fails."""
    started = time.monotonic()
    result = pipeline.run()
    try:
        while True:
            state = result.state
            assert state not in FAILED_STATES, f"the Flink job ended in {state}"
            try:
                check()
                time.sleep(3)
                check()
                # Everything, dead-letter windows included, was written while the job ran.
                assert result.state == PipelineState.RUNNING, result.state
                return time.monotonic() - started
            except AssertionError:
                if time.monotonic() - started > deadline_secs:
                    raise
                time.sleep(2)
    finally:
        result.cancel()


def test_bounded_replay_on_flink_matches_the_model(tmp_path):
    stream = simulate(SimulationSettings(seed=11, players=80, duration_secs=900))
    write_lines(str(tmp_path / "events.tsv"), stream.lines)
    out, bad = tmp_path / "out", tmp_path / "bad"

    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.main",
            f"--input={tmp_path}/events.tsv",
            f"--snapshot_path={out}",
            f"--dead_letter_path={bad}",
            "--runner=FlinkRunner",
            "--flink_master=[local]",
            f"--flink_job_server_jar={JAR}",
            "--parallelism=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    print(f"bounded Flink run of {len(stream.lines)} lines took {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Really starting service" in result.stderr  # it really went through the job server

    assert_history_equals_model(read_history(str(out)), stream.observations, 300, 60)
    dead = [json.loads(line) for path in bad.rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(dead) == stream.malformed > 0


def test_a_stream_run_that_stops_by_itself_ends_on_flink(moto_endpoint, flink_job_server, tmp_path):
    """--stop_when_idle_secs on Flink: the sources are let go (runners.apply_runner_defaults),
    so the job finishes by itself, with every output the model's."""
    job_endpoint, _log = flink_job_server
    stream = new_stream(moto_endpoint, "flink-finite", seed=21)
    out, bad = tmp_path / "out", tmp_path / "bad"
    options = checked_options(streaming_args("flink-finite", moto_endpoint, out, bad, job_endpoint))

    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options, resume_from=prepare_restart(options))
    assert pipeline.run().wait_until_finish() == PipelineState.DONE
    print(
        f"finite Flink streaming run of {len(stream.lines)} records took {time.monotonic() - started:.1f} s"
    )

    assert_outputs_equal_model(stream, out, bad, moto_endpoint, "flink-finite")


def test_stream_on_flink_matches_the_model(moto_endpoint, flink_job_server, tmp_path):
    job_endpoint, log = flink_job_server
    stream = new_stream(moto_endpoint, "flink-stream", seed=5)
    out, bad = tmp_path / "out", tmp_path / "bad"
    options = checked_options(
        [*streaming_args("flink-stream", moto_endpoint, out, bad, job_endpoint), KEEP_SOURCES_ALIVE]
    )
    checkpoints_before = len([line for line in log.lines if COMPLETED.search(line)])

    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options, resume_from=prepare_restart(options))
    took = run_until_outputs_match(
        pipeline, lambda: assert_outputs_equal_model(stream, out, bad, moto_endpoint, "flink-stream")
    )
    print(f"Flink streaming run of {len(stream.lines)} records matched the model after {took:.1f} s")

    completed = [line for line in log.lines if COMPLETED.search(line)][checkpoints_before:]
    assert completed, "no Flink checkpoint completed during the run"


def test_a_quiet_stream_keeps_flink_publishing_windows_with_the_clock(
    moto_endpoint, flink_job_server, tmp_path
):
    """The stream goes quiet while its players are still in their levels: after
    --idle_shard_secs the reader moves its watermark with the clock, and on Flink too the
    windows after the last record keep coming, each with the players still there. (Until
    2026-12-04 docs/flink.md said this job server kept a quiet stream's watermark put.)"""
    job_endpoint, _log = flink_job_server
    now_ms = int(time.time() * 1000)
    stream = simulate(  # two minutes of events, the last about half a minute ago
        SimulationSettings(seed=31, players=40, duration_secs=120, start_ms=now_ms - 150_000)
    )
    last_record_ms = max(o.event_time_ms for o in stream.observations)
    name = "flink-quiet"
    make_stream(moto_endpoint, name, shards=2)
    put_records(
        boto3.client("kinesis", endpoint_url=moto_endpoint, region_name="us-east-1"), name, stream.lines
    )
    out, bad = tmp_path / "out", tmp_path / "bad"
    args = [
        a for a in streaming_args(name, moto_endpoint, out, bad, job_endpoint) if "stop_when_idle" not in a
    ]
    options = checked_options([*args, "--idle_shard_secs=5", "--window_secs=10", KEEP_SOURCES_ALIVE])
    transitions = model_transitions(stream.observations, 300_000)  # --timeout_secs' default

    def windows_after_the_last_record_equal_the_model():
        history = read_history(str(out))
        ends = sorted(parse_timestamp_ms(end) for end in history)
        assert ends and ends[-1] >= last_record_ms + 30_000, (
            f"latest window ends {ends[-1:]}, the last record is at {last_record_ms}"
        )
        for end_ms in ends:
            in_window = {}
            for from_level, to_level, time_ms in transitions:
                if end_ms - 10_000 <= time_ms < end_ms:
                    key = f"{from_level}/{to_level}"
                    in_window[key] = in_window.get(key, 0) + 1
            levels, moves = snapshot_as_files(players_at(transitions, end_ms), in_window)
            level_doc, transition_doc = history[iso_utc(end_ms)]
            assert level_doc["level_player_counts"] == levels, iso_utc(end_ms)
            assert transition_doc["transitions"] == moves, iso_utc(end_ms)
        assert players_at(transitions, ends[-1])  # players still in their levels, not an empty game

    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options, resume_from=prepare_restart(options))
    took = run_until_outputs_match(pipeline, windows_after_the_last_record_equal_the_model, deadline_secs=300)
    print(f"a window 30 s after the last record was published {took:.1f} s after the job started")


def test_a_flink_run_shows_its_figures_while_it_runs_and_stops_on_sigterm(moto_endpoint, tmp_path):
    """pipeline.main on an embedded Flink, as `make run-flink` starts it:

    * while it runs, its status has the pipeline's figures (records read, writes), read
      from Flink's REST API (the job server reports Beam's metrics only at the end);
    * a supervisor's SIGTERM (systemd, docker stop, Kubernetes) stops it as Ctrl-C does:
      the job cancelled, the last status written, and the job server Beam started for it,
      a JVM, stopped with it (SIGTERM's default ended the Python process alone, and the
      JVM was left running)."""
    name = "flink-sigterm"
    new_stream(moto_endpoint, name, seed=41)
    out, log = tmp_path / "out", tmp_path / "stderr.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.main",
            f"--stream_name={name}",
            f"--aws_endpoint_url={moto_endpoint}",
            "--aws_region=us-east-1",
            "--initial_position=TRIM_HORIZON",
            f"--snapshot_path={out}",
            "--write_dynamodb",
            "--create_tables",
            f"--level_table={name}-levels",
            f"--transitions_table={name}-transitions",
            f"--progress_table={name}-progress",
            "--runner=FlinkRunner",
            "--flink_master=[local]",
            f"--flink_job_server_jar={JAR}",
            "--parallelism=2",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # a file: a pipe nobody reads while the job runs could fill up
    )
    job_server = set()
    try:
        deadline = time.monotonic() + OUTPUT_DEADLINE_SECS
        while not (out / "history" / "levels").is_dir():  # the job runs and has published
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no window published"
            time.sleep(2)
        job_server = {pid for pid in descendants(process.pid) if "job-server" in command_line(pid)}
        assert job_server, "no job server under the run"
        while True:  # the status refreshes every --update_secs
            status = json.loads((out / "pipeline_status.json").read_text())
            if status["state"] == "RUNNING" and status["records_read"] and status["dynamodb_writes"]:
                break
            assert time.monotonic() < deadline, f"no figures while the job runs: {status}"
            time.sleep(1)
        assert status["dead_letters"] and status["watermark"]

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        stderr = log.read_text()
        assert "stopped (SIGTERM)" in stderr, stderr[-3000:]
        assert json.loads((out / "pipeline_status.json").read_text())["state"] == "CANCELLED"
        deadline = time.monotonic() + 30
        while [pid for pid in job_server if os.path.exists(f"/proc/{pid}")]:
            assert time.monotonic() < deadline, f"the job server outlived the run: {job_server}"
            time.sleep(1)
    finally:
        if process.poll() is None:
            process.kill()
        for pid in job_server:  # not left behind for the next tests, whatever happened
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class FailOnceAfterACheckpoint(beam.DoFn):
    """Passes records through. Once the test has seen Flink complete checkpoints after
    this step saw its first record (the "checkpointed" file), the next record raises,
    once. Files remember what happened, since the instance that raised is thrown away
    with the failed task (LOOPBACK: the files and the test are in one process)."""

    def __init__(self, marker_dir):
        self._seen = os.path.join(marker_dir, "seen")
        self._checkpointed = os.path.join(marker_dir, "checkpointed")
        self._failed = os.path.join(marker_dir, "failed")

    def process(self, record):
        if not os.path.exists(self._seen):
            open(self._seen, "a").close()
        elif os.path.exists(self._checkpointed) and create_once(self._failed):
            raise RuntimeError("injected failure: Flink must restore from its latest checkpoint")
        yield record


def create_once(path) -> bool:
    """True for the one caller that creates the file."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def test_flink_restores_from_a_checkpoint_after_a_failure(
    moto_endpoint,
    flink_job_server,
    tmp_path,
):
    job_endpoint, log = flink_job_server
    stream = new_stream(moto_endpoint, "flink-failure", seed=8)
    out, bad, markers = tmp_path / "out", tmp_path / "bad", tmp_path / "markers"
    markers.mkdir()
    args = streaming_args("flink-failure", moto_endpoint, out, bad, job_endpoint)
    # Small reads, so the stream is still being read when the failure comes; a fixed
    # restart strategy, so the test does not depend on Flink's default one.
    args += [
        "--max_records=50",
        "--number_of_execution_retries=3",
        "--execution_retry_delay=1000",
        KEEP_SOURCES_ALIVE,
    ]
    options = checked_options(args)
    opts = options.view_as(LevelAnalyticsOptions)

    completed_after_seen = []
    earlier_jobs = set(log.jobs)  # jobs of earlier tests may still be checkpointing

    def mark_checkpointed(job_id, checkpoint_id):
        # The second checkpoint completed after the first record was seen was certainly
        # triggered after it: its state holds reading progress, not just the start.
        if job_id not in earlier_jobs and (markers / "seen").exists():
            completed_after_seen.append(checkpoint_id)
            if len(completed_after_seen) == 2:
                (markers / "checkpointed").touch()

    log.on_checkpoint = mark_checkpointed
    restores_before = len([line for line in log.lines if RESTORED.search(line)])
    pipeline = beam.Pipeline(options=options)
    read = pipeline | "ReadKinesis" >> ReadKinesisRecords(
        opts.stream_name,
        opts.aws_region,
        endpoint_url=opts.aws_endpoint_url,
        initial_position=opts.initial_position,
        max_out_of_orderness_secs=opts.max_out_of_orderness_secs,
        max_records=opts.max_records,
        stop_when_idle_secs=opts.stop_when_idle_secs,
    )
    records = read[ReadKinesisRecords.RECORDS] | "FailOnce" >> beam.ParDo(
        FailOnceAfterACheckpoint(str(markers))
    )
    build_pipeline(pipeline, options, records=records, resume_from=prepare_restart(options))
    try:
        took = run_until_outputs_match(
            pipeline, lambda: assert_outputs_equal_model(stream, out, bad, moto_endpoint, "flink-failure")
        )
    finally:
        log.on_checkpoint = None
    print(f"Flink run with one injected failure matched the model after {took:.1f} s")

    assert (markers / "failed").exists(), "the failure was never injected"
    restores = [line for line in log.lines if RESTORED.search(line)][restores_before:]
    assert restores, "Flink did not restore the job from a checkpoint"
    assert int(RESTORED.search(restores[0]).group(2)) >= completed_after_seen[1]
    print(restores[0][restores[0].index("Restoring") :])
