"""Restarts without drift, through a real AWS endpoint (moto's server on loopback):
S3 snapshots and dead letters, DynamoDB tables, a 2-shard Kinesis stream.

- A run killed with SIGKILL while writing, then restarted with the same flags, ends
  with exactly the model's tables and history objects.
- A live stream processed in segments (--stop_when_caught_up), each resuming from the
  checkpoint the previous one committed, ends exactly like one uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
from moto_server import REGION, make_stream, moto_endpoint  # noqa: F401
from reference_model import model_snapshots, model_transition_totals
from test_kinesis_end_to_end import put_all
from test_main_end_to_end import assert_history_equals_model

from pipeline.simulate import SimulationSettings, simulate

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


def read_history(s3, bucket):
    """{window_end_iso: (levels, transitions)} from the S3 history objects."""
    history = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="snapshots/history/levels/")
    for page in pages:
        for item in page.get("Contents", []):
            name = item["Key"].rsplit("/", 1)[1]
            levels = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            key = f"snapshots/history/transitions/{name}"
            transitions = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            history[name[: -len(".json")]] = (levels, transitions)
    return history


def read_dead_letters(s3, bucket):
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="dead-letters/")
        for item in page.get("Contents", [])
    ]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode() for key in keys}


def committed_as_of(dynamodb, table):
    try:
        item = dynamodb.get_item(TableName=table, Key={"pipeline": {"S": "level-analytics"}}).get("Item")
    except dynamodb.exceptions.ResourceNotFoundException:
        return None
    return None if not item else int(item["asOf"]["N"])


def assert_outputs_equal_model(endpoint, stream_name, bucket, stream):
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
    assert_history_equals_model(read_history(s3, bucket), stream.observations, TIMEOUT_SECS, WINDOW_SECS)
    items = dynamodb.scan(TableName=f"{stream_name}-transitions")["Items"]
    totals = {item["transitionLevels"]["S"]: int(item["count"]["N"]) for item in items}
    assert totals == model_transition_totals(stream.observations, TIMEOUT_SECS)
    levels = dynamodb.scan(TableName=f"{stream_name}-levels")["Items"]
    assert levels and {int(item["playerCount"]["N"]) for item in levels} == {0}
    # Every malformed line once, in the object of its window; nothing twice.
    dead = [line for body in read_dead_letters(s3, bucket).values() for line in body.splitlines()]
    assert len(dead) == len(set(dead)) == stream.malformed


def fresh_scenario(endpoint, name, seed):
    stream = simulate(
        SimulationSettings(seed=seed, players=50, duration_secs=900, max_out_of_orderness_secs=10)
    )
    client = make_stream(endpoint, name, shards=2)
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=f"{name}-bucket")
    return stream, client, f"{name}-bucket"


def test_kill_9_while_writing_then_restart_gives_the_model(moto_endpoint):  # noqa: F811
    stream, client, bucket = fresh_scenario(moto_endpoint, "killed", seed=21)
    put_all(client, "killed", stream.lines)
    command = pipeline_command(moto_endpoint, "killed", bucket, "--stop_when_idle_secs=3")
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name=REGION)
    last_window_end = max(model_snapshots(stream.observations, TIMEOUT_SECS, WINDOW_SECS))

    victim = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while committed_as_of(dynamodb, "killed-progress") is None:
            assert victim.poll() is None, "the run ended before committing anything"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.wait(timeout=60)
    killed_at = committed_as_of(dynamodb, "killed-progress")
    assert killed_at < last_window_end, "killed too late: the run had already committed everything"

    run_to_end(command)
    assert_outputs_equal_model(moto_endpoint, "killed", bucket, stream)


@pytest.mark.parametrize("segments", [3])
def test_a_stream_read_in_segments_ends_like_one_run(moto_endpoint, segments):  # noqa: F811
    stream, client, bucket = fresh_scenario(moto_endpoint, "segmented", seed=22)
    command = pipeline_command(moto_endpoint, "segmented", bucket)
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name=REGION)
    committed = []
    size = len(stream.lines) // segments + 1
    for start in range(0, len(stream.lines), size):
        put_all(client, "segmented", stream.lines[start : start + size])
        run_to_end([*command, "--stop_when_caught_up"])
        committed.append(committed_as_of(dynamodb, "segmented-progress"))
    # Each segment committed further than the one before, none reached the end yet.
    assert all(a < b for a, b in zip(committed, committed[1:], strict=False)), committed
    last_window_end = max(model_snapshots(stream.observations, TIMEOUT_SECS, WINDOW_SECS))
    assert committed[-1] < last_window_end

    run_to_end([*command, "--stop_when_idle_secs=3"])  # the stream ends: everyone times out
    assert_outputs_equal_model(moto_endpoint, "segmented", bucket, stream)
