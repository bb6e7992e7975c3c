"""Restarts without drift, on Prism, through a real AWS endpoint (moto's server on
loopback): S3 snapshots and dead letters, DynamoDB tables, a 2-shard Kinesis stream.

A run killed with SIGKILL, before its first checkpoint or after it while still writing,
then restarted with the same flags, ends with exactly the model's tables, history
objects and dead letters (each once).
"""

import os
import subprocess
import sys
import time

import boto3
import pytest

from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, simulate
from pipeline.testing import outputs
from pipeline.testing.aws_server import REGION, make_stream
from pipeline.testing.crash import run_to_be_killed
from pipeline.testing.reference_model import model_snapshots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_SECS, WINDOW_SECS = 300, 60


def pipeline_command(endpoint, stream_name, bucket, *extra):
    return [
        sys.executable,
        "-m",
        "pipeline.main",
        f"--stream_name={stream_name}",
        f"--aws_endpoint_url={endpoint}",
        f"--aws_region={REGION}",
        "--initial_position=TRIM_HORIZON",
        "--max_out_of_orderness_secs=10",
        f"--snapshot_path=s3://{bucket}/snapshots",
        f"--dead_letter_path=s3://{bucket}/dead-letters",
        "--write_dynamodb",
        "--create_tables",
        f"--level_table={stream_name}-levels",
        f"--transitions_table={stream_name}-transitions",
        f"--progress_table={stream_name}-progress",
        *extra,
    ]


def run_to_end(command):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def committed_as_of(dynamodb, table):
    try:
        item = dynamodb.get_item(TableName=table, Key={"pipeline": {"S": "level-analytics"}}).get("Item")
    except dynamodb.exceptions.ResourceNotFoundException:
        return None
    return None if not item else int(item["asOf"]["N"])


def assert_outputs_equal_model(endpoint, stream_name, bucket, stream):
    outputs.assert_outputs_equal_model(
        boto3.client("s3", endpoint_url=endpoint, region_name=REGION),
        boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION),
        bucket,
        (f"{stream_name}-transitions", f"{stream_name}-levels"),
        stream.observations,
        stream.malformed,
        TIMEOUT_SECS,
        WINDOW_SECS,
    )


def fresh_scenario(endpoint, name, seed):
    stream = simulate(
        SimulationSettings(seed=seed, players=50, duration_secs=900, max_out_of_orderness_secs=10)
    )
    client = make_stream(endpoint, name, shards=2)
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=f"{name}-bucket")
    return stream, client, f"{name}-bucket"


def first_history_object(s3, bucket):
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="snapshots/history/levels/", MaxKeys=1)
    return listing.get("KeyCount", 0) > 0


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["first snapshot", "first checkpoint"])
def test_kill_9_then_restart_gives_the_model(moto_endpoint, kill_at):
    name = "killed-" + kill_at.split()[1]
    stream, client, bucket = fresh_scenario(moto_endpoint, name, seed=21)
    put_records(client, name, stream.lines)
    command = pipeline_command(moto_endpoint, name, bucket, "--stop_when_idle_secs=3")
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name=REGION)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    last_window_end = max(model_snapshots(stream.observations, TIMEOUT_SECS, WINDOW_SECS))

    def reached():
        if kill_at == "first snapshot":
            return first_history_object(s3, bucket)
        return committed_as_of(dynamodb, f"{name}-progress") is not None

    with run_to_be_killed(command, ROOT) as victim:  # SIGKILLed on leaving the block
        deadline = time.monotonic() + 300
        while not reached():
            assert victim.poll() is None, f"the run ended before its {kill_at}"
            assert time.monotonic() < deadline, f"no {kill_at} within 300 s"
            time.sleep(0.05)
    killed_at = committed_as_of(dynamodb, f"{name}-progress")
    assert killed_at is None or killed_at < last_window_end, "killed too late: everything was committed"

    run_to_end(command)
    assert_outputs_equal_model(moto_endpoint, name, bucket, stream)


def stored_start(dynamodb, table):
    try:
        item = dynamodb.get_item(TableName=table, Key={"pipeline": {"S": "level-analytics/start"}}).get(
            "Item"
        )
    except dynamodb.exceptions.ResourceNotFoundException:
        return None
    return None if not item else item["initialPosition"]["S"]


@pytest.mark.slow
def test_a_run_started_at_latest_and_killed_counts_only_what_came_after_its_start(moto_endpoint):
    """--initial_position=LATEST (the default): the first run counts the records that
    arrive after it starts. Killed at its first checkpoint C and restarted, it re-reads
    from C - timeout - out-of-orderness to rebuild its players, but never from before its
    own start: records already in the stream then were never counted, and must not be
    now. Checked once with the re-read unbounded by the start: the restart counted the
    older records too and the tables were off."""
    name = "killed-latest"
    stream, client, bucket = fresh_scenario(moto_endpoint, name, seed=23)
    older = simulate(SimulationSettings(seed=24, players=20, duration_secs=600, max_out_of_orderness_secs=10))
    put_records(client, name, older.lines)  # in the stream before the run starts
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name=REGION)
    latest = ["--initial_position=LATEST"]
    # The first run neither stops when idle nor lets idle shards move its watermark, so
    # it cannot commit everything before it is killed.
    first = pipeline_command(moto_endpoint, name, bucket, *latest, "--idle_shard_secs=86400")
    with run_to_be_killed(first, ROOT) as victim:
        deadline = time.monotonic() + 120
        while stored_start(dynamodb, f"{name}-progress") is None:  # stored before the pipeline starts
            assert victim.poll() is None and time.monotonic() < deadline, "no start stored"
            time.sleep(0.05)
        put_records(client, name, stream.lines)
        deadline = time.monotonic() + 300
        while committed_as_of(dynamodb, f"{name}-progress") is None:
            assert victim.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    assert stored_start(dynamodb, f"{name}-progress").startswith("AT_TIMESTAMP:")

    run_to_end(pipeline_command(moto_endpoint, name, bucket, *latest, "--stop_when_idle_secs=3"))
    assert_outputs_equal_model(moto_endpoint, name, bucket, stream)
