"""Many distinct transition pairs, and a run killed once its checkpoint is split into parts.

tests/test_dynamodb_sink.py runs this at 8,000 pairs; `python -m bench.backfill --only
restart` runs it at 50,000 pairs over 1,000 levels (issue 14's "many levels").
"""

import os
import random
import subprocess
import sys
import time
import uuid

import boto3

from pipeline.apps.producer import put_records
from pipeline.rules.observations import Observation
from pipeline.rules.tables import PIPELINE_NAME
from pipeline.testing.crash import run_to_be_killed
from pipeline.testing.enriched_lines import enriched_line, level_context
from pipeline.testing.reference_model import model_snapshots

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def many_pairs_stream(players=8000, levels=1000, seed=8):
    """Each player enters one level and moves to another, a pair no other player takes,
    over 20 minutes: `players` distinct "A/B" totals, besides the entries and exits of up
    to `levels` levels each, so the checkpoint outgrows one DynamoDB item. Returns the
    lines in arrival order (within 5 s of event time) and their observations."""
    rng = random.Random(seed)
    start = 1_795_000_000_000
    names = [f"campaign-level-{i:04d}" for i in range(levels)]
    taken, timed = set(), []
    for p in range(players):
        a, b = rng.sample(names, 2)
        while (a, b) in taken:
            a, b = rng.sample(names, 2)
        taken.add((a, b))
        enter = start + rng.randrange(0, 20 * 60_000)
        for level, at in ((a, enter), (b, enter + rng.randrange(1_000, 60_000))):
            event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            line = enriched_line(event_id, at, [level_context(f"player-{p}", level)]).encode()
            timed.append(
                (at + rng.randrange(0, 5_000), line, Observation(f"player-{p}", level, at, event_id, 0))
            )
    timed.sort(key=lambda entry: entry[0])
    return [line for _, line, _ in timed], [observation for _, _, observation in timed]


def catch_up_flags(endpoint: str, name: str, snapshot_path: str, extra_flags=(), stop_when_idle=True) -> list:
    """`pipeline.main`'s flags for stream `name` read from its start, ending once idle
    (unless `stop_when_idle` is false), writing tables named after the stream;
    `extra_flags` come last, so they win."""
    return [
        f"--stream_name={name}",
        f"--aws_endpoint_url={endpoint}",
        "--initial_position=TRIM_HORIZON",
        "--max_out_of_orderness_secs=10",
        *(["--stop_when_idle_secs=3"] if stop_when_idle else []),
        f"--snapshot_path={snapshot_path}",
        "--write_dynamodb",
        "--create_tables",
        f"--level_table={name}-levels",
        f"--transitions_table={name}-transitions",
        f"--progress_table={name}-progress",
        *extra_flags,
    ]


def restart_command(
    endpoint: str, region: str, name: str, snapshot_path: str, extra_flags=(), stop_when_idle=True
) -> list:
    """The process that catch_up_flags describes."""
    flags = catch_up_flags(
        endpoint, name, snapshot_path, [f"--aws_region={region}", *extra_flags], stop_when_idle
    )
    return [sys.executable, "-m", "pipeline.main", *flags]


# Shards stay silent between the two puts for as long as the first run takes to commit a
# checkpoint in parts; they must keep holding the watermark at the records read, or the
# rest of the stream would arrive behind it (late) after the restart.
HOLD_WATERMARK = ("--idle_shard_secs=86400",)


def kill_after_checkpoint_in_parts_then_restart(
    endpoint: str,
    region: str,
    name: str,
    lines: list,
    observations: list,
    snapshot_path: str,
    extra_flags=(),
    timeout_secs: int = 900,
    first_share: float = 0.8,
) -> dict:
    """Puts the first `first_share` of `lines` into stream `name` (it exists, empty) and
    runs `pipeline.main` over it; SIGKILLs it as soon as it has committed a checkpoint
    split into parts; puts the rest of the lines and runs it again to the end. The first
    run cannot commit everything, whatever its speed: the rest is not in the stream yet,
    and its watermark stays behind the records it has read (HOLD_WATERMARK). Both runs
    have the same flags, except that only the second stops once idle (the first would
    otherwise stop, and close everything, before it is killed). Asserts that it happened
    so; returns how long each run took and the checkpoint's size when killed."""
    flags = [*HOLD_WATERMARK, *extra_flags]
    first = restart_command(endpoint, region, name, snapshot_path, flags, stop_when_idle=False)
    command = restart_command(endpoint, region, name, snapshot_path, flags)
    client = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint)
    kinesis = boto3.client("kinesis", region_name=region, endpoint_url=endpoint)
    split = int(len(lines) * first_share)

    def head():
        try:
            return client.get_item(TableName=f"{name}-progress", Key={"pipeline": {"S": PIPELINE_NAME}}).get(
                "Item"
            )
        except client.exceptions.ResourceNotFoundException:
            return None

    put_records(kinesis, name, lines[:split])
    started = time.monotonic()
    with run_to_be_killed(first, ROOT) as victim:  # SIGKILLed on leaving the block
        while "partsDigest" not in (head() or {}):  # one GetItem per poll
            assert victim.poll() is None, "the run ended before committing a checkpoint in parts"
            assert time.monotonic() < started + timeout_secs, (
                f"no checkpoint in parts within {timeout_secs} s"
            )
            time.sleep(0.2)
    killed_after = time.monotonic() - started
    killed_head = head()
    killed_at = int(killed_head["asOf"]["N"])
    assert killed_at < max(model_snapshots(observations, 300, 60)), (
        "killed too late: everything was committed"
    )

    put_records(kinesis, name, lines[split:])
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_secs)
    restart_secs = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after" in result.stderr and int(head()["asOf"]["N"]) > killed_at
    return {
        "killed_after_secs": killed_after,
        "killed_at_ms": killed_at,
        "parts_when_killed": int(killed_head["parts"]["N"]),
        "restart_secs": restart_secs,
    }
