"""`make bench`: every figure of issue 6 beside what it is compared with in the same run.

    python -m bench.run [--quick]

Prints one table and writes it as JSON to bench/results/ (a timestamped file and
latest.json). Inputs are generated here, with pipeline.apps.simulator. Each pipeline runs in
a fresh child process (bench.child) and is timed without its imports. The machine is
shared, so the ratios (measured minutes apart in the same run) mean more than the
absolute rates. --quick shrinks every input, to check the harness itself.
"""

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime

from bench import memory, parse
from bench.common import child_result, percentile, run_child, start_child
from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, simulate, write_lines
from pipeline.rules.observations import BadLine, decode_line, event_time_ms
from pipeline.testing.aws_server import MotoServer
from pipeline.testing.outputs import read_history_bytes

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
UPDATE_MS = 5000


def sdk_transform_rate(lines: list) -> float:
    """Lines/s of the Snowplow SDK's transform alone (decoding included), over `lines`."""
    from snowplow_analytics_sdk.event_transformer import transform
    from snowplow_analytics_sdk.snowplow_event_transformation_exception import (
        SnowplowEventTransformationException,
    )

    started = time.perf_counter()
    for line in lines:
        try:
            transform(line.decode("utf-8"))
        except (SnowplowEventTransformationException, UnicodeDecodeError):
            pass
    return len(lines) / (time.perf_counter() - started)


# --- 1. bounded throughput ------------------------------------------------------------


def bounded_throughput(work: str, players: int, duration_secs: int) -> dict:
    stream = simulate(SimulationSettings(seed=1, players=players, duration_secs=duration_secs))
    path = os.path.join(work, "bounded.tsv")
    write_lines(path, stream.lines)
    n = len(stream.lines)
    sdk = sdk_transform_rate(stream.lines)
    main = run_child("main", {"argv": [f"--input={path}", f"--snapshot_path={work}/bounded_out"]})
    baseline = run_child("baseline", {"input": path, "output": f"{work}/baseline_out/sums"})
    main_rate, baseline_rate = n / main["seconds"], n / baseline["seconds"]
    return {
        "events": n,
        "players": players,
        "pipeline_events_per_s": main_rate,
        "pipeline_seconds": main["seconds"],
        "pipeline_peak_rss_mib": main["peak_rss_mib"],
        "sdk_transform_events_per_s": sdk,
        "baseline_events_per_s": baseline_rate,
        "baseline_seconds": baseline["seconds"],
        "vs_baseline": main_rate / baseline_rate,
        "vs_sdk_transform": main_rate / sdk,
    }


# --- 2. streaming throughput ----------------------------------------------------------


def plain_read(client, stream: str, expected: int) -> tuple[int, float]:
    """A boto3 loop that only reads: every shard from TRIM_HORIZON, 1000 records per
    GetRecords (the pipeline's --max_records), until all records are read."""
    shards = [s["ShardId"] for s in client.list_shards(StreamName=stream)["Shards"]]
    started = time.perf_counter()
    iterators = {
        s: client.get_shard_iterator(StreamName=stream, ShardId=s, ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"
        ]
        for s in shards
    }
    read = 0
    while read < expected and iterators:
        for shard in list(iterators):
            answer = client.get_records(ShardIterator=iterators[shard], Limit=1000)
            read += len(answer["Records"])
            iterators[shard] = answer.get("NextShardIterator")
            if not iterators[shard]:
                del iterators[shard]
    return read, time.perf_counter() - started


def streaming_throughput(moto: MotoServer, work: str, players: int, duration_secs: int) -> dict:
    stream = simulate(SimulationSettings(seed=2, players=players, duration_secs=duration_secs))
    kinesis = moto.make_stream("bench-throughput", shards=2)
    put_records(kinesis, "bench-throughput", stream.lines)
    n = len(stream.lines)
    read, read_secs = plain_read(kinesis, "bench-throughput", n)
    idle_secs = 2
    result = run_child(
        "main",
        {
            "argv": [
                "--stream_name=bench-throughput",
                f"--aws_endpoint_url={moto.endpoint}",
                "--initial_position=TRIM_HORIZON",
                f"--stop_when_idle_secs={idle_secs}",
                f"--snapshot_path={work}/stream_out",
                "--write_dynamodb",
                "--create_tables",
                "--level_table=throughput-levels",
                "--transitions_table=throughput-transitions",
                "--progress_table=throughput-progress",
            ]
        },
    )
    # The same lines as a bounded input: the stream's snapshots must be identical.
    path = os.path.join(work, "stream_lines.tsv")
    write_lines(path, stream.lines)
    run_child("main", {"argv": [f"--input={path}", f"--snapshot_path={work}/stream_bounded_out"]})
    same = read_history_bytes(f"{work}/stream_out") == read_history_bytes(f"{work}/stream_bounded_out")
    # The run ends idle_secs after the last record was read; that wait is not work.
    busy = result["seconds"] - idle_secs
    return {
        "events": n,
        "players": players,
        "pipeline_events_per_s": n / busy,
        "pipeline_seconds": busy,
        "plain_read_events_per_s": read / read_secs,
        "vs_plain_read": (n / busy) / (read / read_secs),
        "snapshots_equal_bounded_run": same,
    }


# --- 3. DynamoDB cost -----------------------------------------------------------------


def dynamodb_cost(moto: MotoServer, work: str, rates: list, duration_secs: int) -> dict:
    """Bounded replays with --write_dynamodb against moto, one per event rate; counts the
    UpdateItem requests whose instant falls in the steady middle of the replay."""
    out = {}
    for label, players in rates:
        settings = SimulationSettings(seed=3, players=players, duration_secs=duration_secs)
        stream = simulate(settings)
        path = os.path.join(work, f"dynamodb_{label}.tsv")
        write_lines(path, stream.lines)
        result = run_child(
            "main",
            {
                "argv": [
                    f"--input={path}",
                    f"--aws_endpoint_url={moto.endpoint}",
                    "--write_dynamodb",
                    "--create_tables",
                    f"--level_table=cost-{label}-levels",
                    f"--transitions_table=cost-{label}-transitions",
                    f"--progress_table=cost-{label}-progress",
                ],
                "log_writes": True,
            },
        )
        # Steady middle: players have arrived (a minute in) and none has been sent home
        # by the end of the simulation yet.
        span_start = settings.start_ms + 60_000
        span_end = settings.start_ms + duration_secs * 1000 - 60_000
        events = sum(1 for line in stream.lines if span_start <= _line_time(line, span_start - 1) < span_end)
        writes = [w for w in result["writes"] if span_start < w[1] <= span_end]
        minutes = (span_end - span_start) / 60_000
        out[label] = {
            "players": players,
            "events_per_s": events / ((span_end - span_start) / 1000),
            "update_item_requests": len(writes),
            "writes_per_1000_events": 1000 * len(writes) / events,
            "writes_per_minute": len(writes) / minutes,
            "of_which_checkpoints": sum(1 for w in writes if w[0].endswith("progress")),
        }
    return out


def _line_time(line: bytes, default: int) -> int:
    try:
        return event_time_ms(decode_line(line).split("\t"))
    except (BadLine, IndexError):
        return default


# --- 4. freshness ---------------------------------------------------------------------


class SnapshotWatcher(threading.Thread):
    """Notes when each history object first appears in a snapshot directory."""

    def __init__(self, root: str):
        super().__init__(daemon=True)
        self.root = os.path.join(root, "history", "levels")
        self.seen = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            if os.path.isdir(self.root):
                now = time.time()
                for name in os.listdir(self.root):
                    self.seen.setdefault(name, now)
            time.sleep(0.1)


def freshness(moto: MotoServer, work: str, players: int, duration_secs: int) -> dict:
    """A live run as `make run` does it: records go into Kinesis at their event time
    (the wall clock) while the pipeline runs in segments (--stop_when_caught_up, each
    resuming from the previous checkpoint; the local runner publishes nothing before
    its source ends), default settings otherwise. When do their effects show?"""
    kinesis = moto.make_stream("bench-live", shards=2)
    start_ms = int(time.time() * 1000) + 5_000
    settings = SimulationSettings(
        seed=4, players=players, duration_secs=duration_secs, start_ms=start_ms, early_share=0.5
    )
    stream = simulate(settings)
    out_dir = f"{work}/live_out"
    watcher = SnapshotWatcher(out_dir)
    watcher.start()
    segment_argv = [
        "--stream_name=bench-live",
        f"--aws_endpoint_url={moto.endpoint}",
        "--initial_position=TRIM_HORIZON",
        "--stop_when_caught_up",
        f"--snapshot_path={out_dir}",
        "--write_dynamodb",
        "--create_tables",
        "--level_table=live-levels",
        "--transitions_table=live-transitions",
        "--progress_table=live-progress",
    ]
    producing = threading.Event()
    producing.set()
    segments = []  # each segment's result, with its writes log

    def run_segments():
        while producing.is_set():
            segments.append(child_result(start_child("main", {"argv": segment_argv, "log_writes": True})))

    runner = threading.Thread(target=run_segments, daemon=True)
    runner.start()
    # Produce: each record once the wall clock reaches its arrival time, in arrival order.
    arrivals = []  # (event_time_ms, accepted wall time)
    index = 0
    while index < len(stream.lines):
        now_ms = time.time() * 1000
        batch = []
        while index < len(stream.lines) and stream.arrival_ms[index] <= now_ms:
            batch.append((_line_time(stream.lines[index], None), stream.lines[index]))
            index += 1
        if batch:
            accepted = put_records(kinesis, "bench-live", [line for _, line in batch])
            arrivals += [(t, wall) for (t, _), wall in zip(batch, accepted, strict=True) if t is not None]
        else:
            time.sleep(0.05)
    producer_end = time.time()
    producing.clear()
    runner.join()
    watcher.stop.set()

    # (a) DynamoDB: an event's effect is written with the first update at or after the
    # end of its update interval.
    writes = sorted(
        (as_of, wall)
        for segment in segments
        for table, as_of, wall, _ in segment["writes"]
        if not table.endswith("progress")
    )
    delays = []
    for t, arrived in arrivals:
        due = t - t % UPDATE_MS + UPDATE_MS
        written = next((wall for as_of, wall in writes if as_of >= due), None)
        if written is not None and written <= producer_end:
            delays.append(written - arrived)
    # (b) S3 (snapshot dir): when each window's object appeared, after its window end.
    window_lag = {}
    for name, seen in watcher.seen.items():
        end_s = datetime.fromisoformat(name[: -len(".json")].replace("Z", "+00:00")).timestamp()
        if end_s <= producer_end - 30:  # windows that closed while records were still coming
            window_lag[name] = seen - end_s
    return {
        "events": len(stream.lines),
        "players": players,
        "producer_seconds": producer_end - (start_ms / 1000),
        "segments": len(segments),
        "segment_seconds_p50": percentile([s["seconds"] for s in segments], 0.5),
        "dynamodb_delay_p50_s": percentile(delays, 0.5),
        "dynamodb_delay_p95_s": percentile(delays, 0.95),
        "dynamodb_writes": len(writes),
        "snapshot_after_window_end_p50_s": percentile(list(window_lag.values()), 0.5),
        "snapshot_after_window_end_p95_s": percentile(list(window_lag.values()), 0.95),
        "windows_closed_while_source_ran": len(window_lag),
        "events_measured": len(delays),
        "events_sent": len(arrivals),
    }


# --- the table ------------------------------------------------------------------------


def rows(results: dict) -> list:
    """(item, figure, compared with, ratio or value, target, met)."""
    b, s, c, f, m, p = (
        results.get(k) for k in ("bounded", "streaming", "dynamodb", "freshness", "memory", "parse")
    )
    table = []
    if b:
        table += [
            (
                "1 bounded throughput",
                f"{b['pipeline_events_per_s']:,.0f} events/s ({b['events']:,} events, {b['players']:,} players)",
                f"straightforward Beam pipeline {b['baseline_events_per_s']:,.0f}/s",
                f"{b['vs_baseline']:.2f}x",
                ">= 3x",
                b["vs_baseline"] >= 3,
            ),
            (
                "1 bounded throughput",
                "(same run)",
                f"SDK transform alone {b['sdk_transform_events_per_s']:,.0f}/s",
                f"{b['vs_sdk_transform']:.2f}x",
                ">= 0.5x",
                b["vs_sdk_transform"] >= 0.5,
            ),
        ]
    if s:
        table.append(
            (
                "2 streaming throughput",
                f"{s['pipeline_events_per_s']:,.0f} events/s Kinesis->DynamoDB+snapshots ({s['events']:,} events; "
                f"snapshots {'equal' if s['snapshots_equal_bounded_run'] else 'NOT equal'} to the bounded run's)",
                f"plain boto3 read {s['plain_read_events_per_s']:,.0f}/s",
                f"{s['vs_plain_read']:.2f}x",
                ">= 0.7x",
                s["vs_plain_read"] >= 0.7,
            )
        )
    if c:
        low, high = c["low"], c["high"]
        table += [
            (
                "3 DynamoDB writes",
                f"{high['writes_per_1000_events']:.1f} per 1000 events at {high['events_per_s']:,.0f} events/s",
                f"{low['writes_per_1000_events']:.1f} at {low['events_per_s']:,.0f} events/s",
                f"{high['writes_per_1000_events']:.1f}",
                "<= 10",
                high["writes_per_1000_events"] <= 10,
            ),
            (
                "3 DynamoDB writes/min",
                f"{high['writes_per_minute']:,.0f}/min at {high['events_per_s']:,.0f} events/s",
                f"{low['writes_per_minute']:,.0f}/min at {low['events_per_s']:,.0f} events/s "
                f"({high['events_per_s'] / low['events_per_s']:.1f}x the events)",
                f"{high['writes_per_minute'] / low['writes_per_minute']:.2f}x",
                "far below 10x",
                high["writes_per_minute"] / low["writes_per_minute"] <= 3,
            ),
        ]
    if f:
        ok_a = f["dynamodb_delay_p95_s"] is not None and f["dynamodb_delay_p95_s"] <= 20
        ok_b = f["snapshot_after_window_end_p95_s"] is not None and f["snapshot_after_window_end_p95_s"] <= 15
        table += [
            (
                "4 freshness DynamoDB",
                f"p95 {_s(f['dynamodb_delay_p95_s'])} (p50 {_s(f['dynamodb_delay_p50_s'])}) from Kinesis "
                f"arrival, {f['events_measured']} of {f['events_sent']} events; pipeline in "
                f"{f['segments']} segments of p50 {_s(f['segment_seconds_p50'])} ({f['producer_seconds']:.0f} s live)",
                "max_out_of_orderness 10 s + 10 s",
                _s(f["dynamodb_delay_p95_s"]),
                "<= 20 s",
                ok_a,
            ),
            (
                "4 freshness snapshots",
                f"p95 {_s(f['snapshot_after_window_end_p95_s'])} (p50 "
                f"{_s(f['snapshot_after_window_end_p95_s'] and f['snapshot_after_window_end_p50_s'])}) after "
                f"window end, {f['windows_closed_while_source_ran']} windows",
                "window end + 15 s",
                _s(f["snapshot_after_window_end_p95_s"]),
                "<= 15 s",
                ok_b,
            ),
        ]
    if m:
        table += [
            (
                "5 state per player",
                f"{m['state_bytes_per_player_mean']:.0f} B mean, {m['state_bytes_per_player_p99']:.0f} B p99 "
                f"({m['players']:,} active players)",
                "1 KiB",
                f"{m['state_bytes_per_player_mean'] / 1024:.2f} KiB",
                "<= 1 KiB",
                m["state_bytes_per_player_p99"] <= 1024,
            ),
            (
                "5 memory over a steady run",
                f"RSS {m['rss_first_mib']:.0f} -> {m['rss_last_mib']:.0f} MiB over "
                f"{m['steady_minutes']:.0f} min event time",
                "first sample after warm-up",
                f"{m['rss_growth_fraction'] * 100:+.1f}%",
                "flat",
                abs(m["rss_growth_fraction"]) <= 0.05,
            ),
        ]
    if p:
        table += [
            (
                "6 parse",
                f"{p['parse_lines_per_s']:,.0f} lines/s (ParseEnrichedEvents' DoFn)",
                f"SDK transform {p['sdk_transform_lines_per_s']:,.0f}/s",
                f"{p['vs_sdk_transform']:.2f}x",
                "(compare)",
                None,
            ),
            (
                "6 parse dead letters",
                f"{p['dead_letter_lines_per_s']:,.0f} bad lines/s",
                f"good lines {p['parse_lines_per_s']:,.0f}/s",
                f"{p['dead_letter_slowdown']:.2f}x slower",
                "<= 2x",
                p["dead_letter_slowdown"] <= 2,
            ),
        ]
    return table


def _s(value):
    return "n/a" if value is None else f"{value:.1f} s"


def print_table(table: list):
    headers = ("item", "figure", "compared with (same run)", "ratio/value", "target", "met")
    cells = [headers] + [
        (a, b, c, d, e, "-" if ok is None else ("yes" if ok else "NO")) for a, b, c, d, e, ok in table
    ]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(" | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def main(argv=None):
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs: check the harness only")
    parser.add_argument("--only", default="", help="comma-separated items to run (bounded,streaming,...)")
    args = parser.parse_args(argv)
    scale = 0.05 if args.quick else 1.0
    only = set(filter(None, args.only.split(",")))
    wanted = lambda item: not only or item in only  # noqa: E731
    started = time.time()
    results = {}
    work = tempfile.mkdtemp(prefix="bench-")
    try:
        if wanted("parse"):
            results["parse"] = parse.measure(lines=int(60_000 * scale) or 2000)
        if wanted("bounded"):
            results["bounded"] = bounded_throughput(
                work, players=max(100, int(5000 * scale)), duration_secs=1800
            )
        if wanted("memory"):
            results["memory"] = memory.measure_in_child(players=max(1000, int(100_000 * scale)))
        with MotoServer() as moto:
            if wanted("streaming"):
                results["streaming"] = streaming_throughput(
                    moto, work, players=max(100, int(1000 * scale)), duration_secs=300
                )
            if wanted("dynamodb"):
                results["dynamodb"] = dynamodb_cost(
                    moto,
                    work,
                    [("low", max(60, int(3000 * scale))), ("high", max(600, int(30000 * scale)))],
                    duration_secs=240,
                )
            if wanted("freshness"):
                results["freshness"] = freshness(
                    moto, work, players=max(100, int(600 * scale)), duration_secs=150
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = rows(results)
    print_table(table)
    elapsed = time.time() - started
    print(
        f"\nbench took {elapsed:.0f} s on {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    )
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "seconds": elapsed,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "table": [
            dict(zip(("item", "figure", "compared_with", "value", "target", "met"), row, strict=True))
            for row in table
        ],
        "results": results,
    }
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"{stamp}{'-quick' if args.quick else ''}.json", "latest.json"):
        with open(os.path.join(RESULTS, name), "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, default=str)
    print(f"written to bench/results/{stamp}.json and bench/results/latest.json")


if __name__ == "__main__":
    main()
