"""Freshness and the cost of a live stream (issue 10 item 5, issue 14 item 4).

One live run: simulated players' records are put into moto's Kinesis at their arrival
times (event time plus up to 10 s) while the pipeline runs continuously, as `make run`
runs it (out-of-orderness 10 s, updates every 5 s unless asked, 10 s windows as `make run` has them,
so that a run of a minute or two publishes enough windows to measure; snapshots on S3,
DynamoDB), until the bench cancels it. Probes in the pipeline's
process (bench.probes) note when each value and each snapshot was written, when the
ledger closed each instant and how long records waited before being read; bench.stages
times every fused stage.

DynamoDB freshness, per record that changed a value (an observation that made a
transition: its transition's total changes as of the next update instant t):
- raw: from the record's arrival to the first write of that total as of t or later;
- floor: from its arrival to when instant t could first be final (bench.streams);
- after final: from then to the write (what the pipeline adds).
Snapshots: for each window end W, the history objects' write after W (raw), the
floor F(W) - W, and the write after F(W).

Only values whose instant could be final while records were still being sent, after
a warm-up, are measured (the first WARMUP_SECS of traffic are left out).
"""

import os
import time
from collections import defaultdict

from bench import checks
from bench.common import ProcessWatch, child_result, quantiles, start_child
from bench.streams import (
    OUT_OF_ORDERNESS_MS,
    UPDATE_MS,
    Finality,
    FirstAfter,
    LiveProducer,
    engine_flags,
    line_time_ms,
    seed_of,
    shard_of,
    traffic,
)
from pipeline.testing.reference_model import model_transitions, players_at

WARMUP_SECS = 20
BUCKET = "bench"
STATUS = "pipeline_status.json"


def _ready(s3, prefix: str) -> bool:
    try:
        s3.head_object(Bucket=BUCKET, Key=f"{prefix}/{STATUS}")
        return True
    except Exception:  # noqa: BLE001 - not there yet
        return False


WINDOW_SECS = 10  # `make run`'s
STARTUP_ESTIMATE_SECS = {"prism": 15, "flink": 45}
_TRAFFIC = {}  # (players, live seconds) -> (simulated stream, its planned start ms)
SIMULATED_LINES_PER_SEC = 8000  # the simulator's speed, roughly, to plan the start


def live_run(
    moto,
    work: str,
    name: str,
    engine: str,
    players: int,
    live_secs: int,
    extra_flags=(),
    experiments=(),
    update_secs=UPDATE_MS // 1000,
) -> dict:
    """One live run of `engine` ("prism", "flink-p1", "flink-p2") with `--update_secs`
    `update_secs`; returns its figures."""
    kinesis, s3, dynamodb = moto.client("kinesis"), moto.client("s3"), moto.client("dynamodb")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    kinesis.create_stream(StreamName=name, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1})
    prefix = f"{name}/snapshots"
    tables = (f"{name}-levels", f"{name}-transitions", f"{name}-progress")
    stop_file = os.path.join(work, f"{name}.stop")
    argv = [
        f"--stream_name={name}",
        f"--aws_endpoint_url={moto.endpoint}",
        "--initial_position=TRIM_HORIZON",
        f"--snapshot_path=s3://{BUCKET}/{prefix}",
        "--write_dynamodb",
        "--create_tables",
        f"--level_table={tables[0]}",
        f"--transitions_table={tables[1]}",
        f"--progress_table={tables[2]}",
        f"--window_secs={WINDOW_SECS}",
        f"--update_secs={update_secs}",
        *engine_flags(engine),
        *extra_flags,
    ]
    # The traffic is generated first, for a start about when the pipeline will be up, and
    # sent from then, or shifted to when the pipeline is running if it took longer. Runs
    # of the same size replay the same traffic (shifted: its clock then runs behind).
    if (players, live_secs) not in _TRAFFIC:
        expected_lines = players * 0.25 * (live_secs + 15)
        planned = time.time() + expected_lines / SIMULATED_LINES_PER_SEC + STARTUP_ESTIMATE_SECS[engine[:5]]
        planned_ms = int(planned * 1000)
        _TRAFFIC[(players, live_secs)] = (
            traffic(players, live_secs + 15, planned_ms, seed_of(str(players))),
            planned_ms,
        )
    stream, planned_start_ms = _TRAFFIC[(players, live_secs)]
    launched = time.time()
    child = start_child(
        "main",
        {
            "argv": argv,
            "probes": True,
            "stages": True,
            "stop_file": stop_file,
            "experiments": list(experiments),
        },
    )
    memory = ProcessWatch({"pipeline": child.pid, "moto": moto.process.pid})
    memory.start()
    deadline = time.time() + 240
    while not _ready(s3, prefix):  # its status object is written once the job runs
        if child.poll() is not None or time.time() > deadline:
            memory.stop()
            if child.poll() is None:
                open(stop_file, "w").close()
            child_result(child)  # raises with the child's error
            raise RuntimeError(f"{name}: the pipeline did not start in 240 s")
        time.sleep(0.5)
    ready = time.time()
    # The traffic clock minus the wall clock: never ahead (records dated after their
    # arrival would shorten the reader's out-of-orderness), behind when the pipeline took
    # longer to start.
    offset_ms = min(0, planned_start_ms - int(ready * 1000))
    end_ms = planned_start_ms + live_secs * 1000
    producer = LiveProducer(kinesis, name, stream, end_ms, offset_ms)
    producer.start()
    producer.join()
    producer_end = time.time()
    time.sleep(15)  # the last values measured are written; later ones are not measured
    open(stop_file, "w").close()
    result = child_result(child, timeout_secs=300)
    peaks = memory.stop()

    sent = len(producer.accepted)
    lines = stream.lines[:sent]
    route = shard_of(kinesis, name)
    finality = Finality(
        [line_time_ms(line) for line in lines],
        [route(line) for line in lines],
        producer.accepted,
        OUT_OF_ORDERNESS_MS,
    )
    unique, first_arrival = {}, {}
    for meant, wall in zip(stream.line_observations[:sent], producer.accepted, strict=True):
        for o in meant:
            unique[(o.event_id, o.index)] = tuple(o)
            key = (o.player, o.event_time_ms, o.level)
            first_arrival[key] = min(first_arrival.get(key, wall), wall)
    observations = list(unique.values())
    check = checks.check_run(
        observations,
        f"s3://{BUCKET}/{prefix}",
        s3=s3,
        dynamodb=dynamodb,
        tables=tables[:2],
        window_secs=WINDOW_SECS,
        finished=False,
        writes=result["writes"],
    )
    figures = freshness_figures(
        result, observations, first_arrival, finality, planned_start_ms, offset_ms, producer_end, update_secs
    )
    span = producer_end - ready
    warm_start = ready + WARMUP_SECS
    writes = [w for w in result["writes"] if warm_start <= w[4] <= producer_end]
    read_times = result.get("read_times", [])
    return {
        "engine": engine,
        "players": players,
        "update_secs": update_secs,
        "active_players_mid_run": _active_players(observations, planned_start_ms + live_secs * 500),
        "live_secs": span,
        "records_sent": sent,
        "offered_per_s": sent / span,
        "producer_behind_max_ms": producer.behind_ms,
        "records_read": result.get("records_read", 0),
        "read_per_s": _rate_between(read_times, warm_start, producer_end),
        "offered_per_s_after_warmup": _rate_between(producer.accepted, warm_start, producer_end),
        "unread_at_producer_end": sum(1 for wall in producer.accepted if wall <= producer_end)
        - sum(1 for wall in read_times if wall <= producer_end),
        "pipeline_start_secs": ready - launched,
        "dynamodb_writes_per_min": 60 * len(writes) / (producer_end - warm_start),
        "processes": [list(p) for p in peaks],  # (label, process, peak RSS MiB, CPU s)
        "pipeline_cpu_secs": sum(p[3] for p in peaks if p[0] == "pipeline"),
        "bottleneck": bottleneck(result.get("stages", {}), result["seconds"]),
        "stages": result.get("stages", {}),
        "read_delay_ms": result.get("read_delay_ms"),
        "check": check,
        **figures,
    }


def _rate_between(walls, start, end):
    n = sum(1 for wall in walls if start <= wall <= end)
    return n / (end - start) if end > start else None


def _active_players(observations, at_ms) -> int:
    return sum(players_at(model_transitions(observations, 300_000), at_ms).values())


def _working(values: dict) -> float:
    return values.get("seconds", 0) - values.get("input_wait_seconds", 0)


def bottleneck(stages: dict, wall_secs: float) -> dict:
    """The stage with the most time working in bundles (inside a bundle, not waiting for
    its input; several bundles may run at once), that time per second of the run, and
    the share of it blocked on the runner's answers to state requests."""
    if not stages:
        return {}
    name, values = max(stages.items(), key=lambda kv: _working(kv[1]))
    seconds = _working(values)
    return {
        "stage": name,
        "busy_secs": seconds,
        "busy_per_wall": seconds / wall_secs if wall_secs else None,
        "state_blocked_share": values.get("state_blocked_seconds", 0) / seconds if seconds else None,
        "state_requests": sum(
            v for k, v in values.items() if k in ("state_get", "state_append", "state_clear")
        ),
    }


def freshness_figures(
    result, observations, first_arrival, finality, start_ms, offset_ms, producer_end, update_secs
) -> dict:
    """The DynamoDB and snapshot delays (see the module docstring), in seconds."""
    warm_ms = start_ms + WARMUP_SECS * 1000
    update_ms = update_secs * 1000
    by_key = defaultdict(list)
    for table, key, as_of, _started, ended, _value in result["writes"]:
        if table.endswith("-transitions"):
            by_key[key].append((as_of, ended))
    written = {key: FirstAfter(rows) for key, rows in by_key.items()}
    closed = FirstAfter((last, wall) for _until, wall, _first, last in result["closes"] if last is not None)
    by_player = defaultdict(list)
    for o in observations:
        by_player[o[0]].append(o)

    raw, floor, after_final, to_ledger, ledger_to_write = [], [], [], [], []
    not_written = 0
    for player, seen in by_player.items():
        for from_level, to_level, time_ms in model_transitions(seen, 300_000):
            arrived = first_arrival.get((player, time_ms, to_level))
            if not to_level or arrived is None or time_ms < warm_ms:
                continue  # a timeout (no record made it), or the warm-up
            instant = time_ms - time_ms % update_ms + update_ms
            final = finality.could_be_final(instant)
            if final is None or final > producer_end:
                continue  # could not be final while records were sent
            key = f"{from_level}/{to_level}"
            visible = written[key](instant) if key in written else None
            if visible is None:
                not_written += 1
                continue
            raw.append(visible - arrived)
            floor.append(final - arrived)
            after_final.append(visible - final)
            ledger = closed(instant)
            if ledger is not None:
                to_ledger.append(ledger - final)
                ledger_to_write.append(visible - ledger)

    published = {}
    for window_end, _started, ended in result["publishes"]:
        published[window_end] = min(published.get(window_end, ended), ended)
    s3_raw, s3_floor, s3_after_final, s3_to_ledger = [], [], [], []
    for window_end, ended in published.items():
        final = finality.could_be_final(window_end)
        if window_end < warm_ms or final is None or final > producer_end:
            continue
        window_end_wall = (window_end - offset_ms) / 1000
        s3_raw.append(ended - window_end_wall)
        s3_floor.append(final - window_end_wall)
        s3_after_final.append(ended - final)
        ledger = closed(window_end)
        if ledger is not None:
            s3_to_ledger.append(ledger - final)
    return {
        "dynamodb_raw_s": quantiles(raw),
        "dynamodb_floor_s": quantiles(floor),
        "dynamodb_after_final_s": quantiles(after_final),
        "dynamodb_final_to_ledger_s": quantiles(to_ledger),
        "dynamodb_ledger_to_written_s": quantiles(ledger_to_write),
        "dynamodb_changes_not_written": not_written,
        "dynamodb_update_item_s": quantiles(
            [w[4] - w[3] for w in result["writes"] if "-progress" not in w[0]]
        ),
        "s3_raw_s": quantiles(s3_raw),
        "s3_floor_s": quantiles(s3_floor),
        "s3_after_final_s": quantiles(s3_after_final),
        "s3_final_to_ledger_s": quantiles(s3_to_ledger),
        "s3_publish_call_s": quantiles([ended - started for _w, started, ended in result["publishes"]]),
        "windows_measured": len(s3_raw),
    }
