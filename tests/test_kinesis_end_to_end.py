"""pipeline.main streaming from a real Kinesis endpoint (moto's server on loopback):
a generated multi-player stream with shuffled arrival, duplicates and bad lines, on
the FnApiRunner, until the stream is idle; every window equals the reference model."""

import json
import os
import subprocess
import sys
import time

import boto3
import pytest

from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, simulate
from pipeline.testing.aws_server import make_stream
from pipeline.testing.outputs import assert_history_equals_model, read_history
from pipeline.testing.reference_model import model_transition_totals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_stream_from_kinesis_matches_the_model(moto_endpoint, tmp_path):
    stream = simulate(
        SimulationSettings(seed=5, players=300, duration_secs=300, max_out_of_orderness_secs=10)
    )
    client = make_stream(moto_endpoint, "enriched-good", shards=2)
    put_records(client, "enriched-good", stream.lines)
    out, bad = tmp_path / "out", tmp_path / "bad"

    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.main",
            "--stream_name=enriched-good",
            f"--aws_endpoint_url={moto_endpoint}",
            "--aws_region=us-east-1",
            "--initial_position=TRIM_HORIZON",
            "--max_out_of_orderness_secs=10",
            "--stop_when_idle_secs=3",
            # Small reads, so the backlog takes several calls per shard.
            "--max_records=200",
            f"--snapshot_path={out}",
            f"--dead_letter_path={bad}",
            "--write_dynamodb",
            "--create_tables",
            # This test's own tables: the moto server is shared by the whole session.
            "--level_table=e2e-levels",
            "--transitions_table=e2e-transitions",
            "--progress_table=e2e-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    print(f"streaming run of {len(stream.lines)} records took {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]

    assert_history_equals_model(read_history(str(out)), stream.observations, 300, 60)
    dead = [json.loads(line) for path in bad.rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(dead) == stream.malformed and not [d for d in dead if d["reason"] == "late"]
    assert all(d["position"].startswith("shardId-") for d in dead)

    # DynamoDB: the transitions table holds the model's totals, every level is back at 0.
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")
    transitions = dynamodb.scan(TableName="e2e-transitions")["Items"]
    totals = {item["transitionLevels"]["S"]: int(item["count"]["N"]) for item in transitions}
    assert totals == model_transition_totals(stream.observations)
    for item in transitions:
        from_level, to_level = item["transitionLevels"]["S"].split("/")
        assert item.get("levelFrom", {}).get("S") == (from_level or None)
        assert item.get("levelTo", {}).get("S") == (to_level or None)
    levels = dynamodb.scan(TableName="e2e-levels")["Items"]
    assert levels and {int(item["playerCount"]["N"]) for item in levels} == {0}
