"""Catch-up at the read rate (issue 14 item 2): a backlog already in the stream, read
from TRIM_HORIZON by the pipeline, beside a plain boto3 read of the same stream in the
same run.

The pipeline's catch-up time runs from its first record read to the moment every value
that the backlog's records can make final is written: the ledger has closed the last
instant before (latest event time - out-of-orderness) and its DynamoDB writes are done.
Job start-up before the first read, and the end of input after it (the idle wait, then
every player's timeout), are reported apart. The outputs are then checked whole against
the reference model (the run ends by itself: --stop_when_idle_secs).
"""

import os
import time

from bench import checks
from bench.common import ProcessWatch, child_result, start_child
from bench.streams import OUT_OF_ORDERNESS_MS, UPDATE_MS, engine_flags, line_time_ms, plain_read, seed_of
from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, simulate

IDLE_SECS = 2


def backlog(events: int, seed: int):
    """About `events` records: events / 44 players over half an hour (fixed start and
    seed, so every run of a size reads the same stream)."""
    players = max(50, events // 44)  # the simulator makes about 44 records per player and half hour
    stream = simulate(SimulationSettings(seed=seed, players=players, duration_secs=1800))
    return stream


def catch_up(
    moto, work: str, name: str, engine: str, events: int, shards: int, experiments=(), extra_flags=()
):
    kinesis, dynamodb = moto.client("kinesis"), moto.client("dynamodb")
    stream = backlog(events, seed_of(f"backlog-{events}"))
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1})
    started = time.perf_counter()
    put_records(kinesis, name, stream.lines)
    put_secs = time.perf_counter() - started
    n = len(stream.lines)
    read, read_secs = plain_read(kinesis, name, n)
    out = os.path.join(work, f"{name}-out")
    tables = (f"{name}-levels", f"{name}-transitions", f"{name}-progress")
    argv = [
        f"--stream_name={name}",
        f"--aws_endpoint_url={moto.endpoint}",
        "--initial_position=TRIM_HORIZON",
        f"--stop_when_idle_secs={IDLE_SECS}",
        f"--snapshot_path={out}",
        "--write_dynamodb",
        "--create_tables",
        f"--level_table={tables[0]}",
        f"--transitions_table={tables[1]}",
        f"--progress_table={tables[2]}",
        *engine_flags(engine),
        *extra_flags,
    ]
    child = start_child(
        "main", {"argv": argv, "probes": True, "stages": True, "experiments": list(experiments)}
    )
    memory = ProcessWatch({"pipeline": child.pid, "moto": moto.process.pid})
    memory.start()
    result = child_result(child, timeout_secs=3600)
    peaks = memory.stop()
    first_read = result["read_times"][0] if result["read_times"] else None

    def since_first_read(wall):
        return wall - first_read if wall is not None and first_read is not None else None

    last_event = max(t for t in map(line_time_ms, stream.lines) if t is not None)
    last_final = last_event - OUT_OF_ORDERNESS_MS
    last_instant = last_final - last_final % UPDATE_MS
    closed = min(
        (wall for _u, wall, _f, last in result["closes"] if last is not None and last >= last_instant),
        default=None,
    )
    writes_done = max(
        (w[4] for w in result["writes"] if w[2] <= last_instant and "-progress" not in w[0]), default=closed
    )
    done = max(closed, writes_done) if closed is not None else None
    busy = since_first_read(done)
    check = checks.check_run(
        stream.observations, out, dynamodb=dynamodb, tables=tables[:2], finished=True, writes=result["writes"]
    )
    from bench.live import bottleneck

    return {
        "engine": engine,
        "experiments": list(experiments),
        "events": n,
        "shards": shards,
        "players": len({o.player for o in stream.observations}),
        "put_secs": put_secs,
        "plain_read_per_s": read / read_secs,
        "catch_up_secs": busy,
        # Which came last: the ledger closing the last instant, or its DynamoDB writes.
        "last_close_secs": since_first_read(closed),
        "last_write_secs": since_first_read(writes_done),
        "pipeline_per_s": n / busy if busy else None,
        "vs_plain_read": (n / busy) / (read / read_secs) if busy else None,
        "startup_secs": first_read - result["started_at"] if first_read else None,
        "total_secs": result["seconds"],
        "dynamodb_writes": sum(1 for w in result["writes"] if "-progress" not in w[0]),
        "processes": [list(p) for p in peaks],  # (label, process, peak RSS MiB, CPU s)
        "pipeline_cpu_secs": sum(p[3] for p in peaks if p[0] == "pipeline"),
        "bottleneck": bottleneck(result.get("stages", {}), busy or result["seconds"]),
        "stages": result.get("stages", {}),
        "check": check,
    }
