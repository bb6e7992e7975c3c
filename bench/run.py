"""`make bench`: every figure beside what it is compared with, measured in the same run.

    python -m bench.run [--quick | --full] [--only ITEMS] [--experiments]

Items (each pipeline in a fresh child process, bench.child, timed without its imports):
- parse: ParseEnrichedEvents' DoFn against the Snowplow SDK's transform (bench.parse);
- bounded: a bounded replay against the straightforward Beam pipeline (bench.baseline)
  and the SDK's transform alone;
- memory: state per active player, and memory over a steady run (bench.memory);
- live: freshness and cost of the live engine (bench.live): records put into moto's
  Kinesis at their arrival times while the pipeline runs continuously, on Prism and on
  the embedded Flink at parallelism 1 and 2, at 1,000 and 10,000 players (--full:
  100,000 too);
- live-1s: the same live run at 1,000 players with `--update_secs=1`, on Prism and on
  Flink p2: with 5 s updates a changed value waits up to 5 s for its update instant
  before it can be final, so the DynamoDB target can only be met on a finer grid;
- flink-checkpoints: that 1 s run on Flink p2 with shorter checkpoint intervals than the
  embedded default of 1 s (on the 2.62 job server a stage's watermark moves on as
  checkpoints finish its bundles, so the interval bounds Flink's freshness);
- catchup: a backlog read at the read rate? (bench.catchup), beside a plain boto3 read
  of the same stream, on Prism and on Flink (--full: 100,000 events over 2 and 8 shards);
- experiments (only with --experiments): changes not in the product, measured beside the
  product on the same backlog (bench.experiments).

Every timed pipeline run's outputs are checked against the reference model (bench.checks)
and the result is in the table. Prints one table and writes it as JSON to bench/results/
(a timestamped file and latest.json). The machine may be shared: ratios measured minutes
apart in one run mean more than absolute rates, and CPU seconds per event (the pipeline's
processes only) mean more than events per second of wall clock. --quick shrinks
everything, to check the harness in a few minutes.
"""

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime

from bench import checks, memory, parse
from bench.catchup import catch_up
from bench.common import MotoProcess, run_child
from bench.live import live_run
from bench.streams import OUT_OF_ORDERNESS_MS
from pipeline.apps.simulator import SimulationSettings, simulate, write_lines

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
OOO_S = OUT_OF_ORDERNESS_MS / 1000
FRESHNESS_SLACK_S = 2.0  # the targets: max_out_of_orderness + 2 s

# Sizes: (default, --quick, --full).
MODES = {
    "default": {
        "parse_lines": 60_000,
        "bounded_players": 5000,
        "memory_players": 100_000,
        "live_players": [1000, 10_000],
        "live_engines": ["prism", "flink-p1", "flink-p2"],
        "live_secs": 90,
        "live_1s": [("prism", 1000), ("flink-p2", 1000)],
        "flink_checkpoint_intervals_ms": [500, 250],
        "catchup": [(30_000, 2)],
        "catchup_engines": ["prism", "flink-p2"],
    },
    "quick": {
        "parse_lines": 3000,
        "bounded_players": 100,
        "memory_players": 2000,
        "live_players": [300],
        "live_engines": ["prism", "flink-p1"],
        "live_secs": 40,
        "live_1s": [("prism", 300)],
        "flink_checkpoint_intervals_ms": [250],
        "catchup": [(3000, 2)],
        "catchup_engines": ["prism", "flink-p2"],
    },
    "full": {
        "parse_lines": 60_000,
        "bounded_players": 5000,
        "memory_players": 100_000,
        "live_players": [1000, 10_000, 100_000],
        "live_engines": ["prism", "flink-p1", "flink-p2"],
        "live_secs": 120,
        "live_1s": [("prism", 1000), ("flink-p2", 1000)],
        "flink_checkpoint_intervals_ms": [500, 250],
        "catchup": [(100_000, 2), (100_000, 8)],
        "catchup_engines": ["prism", "flink-p2"],
    },
}
EXPERIMENT_SETS = [
    ("prism", []),
    ("prism", ["gil_switch_1ms"]),
    ("prism", ["gil_switch_0_2ms"]),
    ("flink-p2", []),
    ("flink-p2", ["gil_switch_1ms"]),
]


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


def bounded_throughput(work: str, players: int, duration_secs: int) -> dict:
    stream = simulate(SimulationSettings(seed=1, players=players, duration_secs=duration_secs))
    path = os.path.join(work, "bounded.tsv")
    write_lines(path, stream.lines)
    n = len(stream.lines)
    sdk = sdk_transform_rate(stream.lines)
    out = f"{work}/bounded_out"
    main = run_child("main", {"argv": [f"--input={path}", f"--snapshot_path={out}"]})
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
        "check": checks.check_run(stream.observations, out, finished=True),
    }


# --- the table --------------------------------------------------------------------------


def _s(value) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _q(figure: dict) -> str:
    """'p50 X / p95 Y' of a quantiles dict."""
    return f"p50 {_s(figure.get('p50'))} / p95 {_s(figure.get('p95'))}"


def _check(check: dict | None) -> str:
    if not check:
        return "-"
    if check["exact"]:
        what = f"{check['windows']} windows"
        if check.get("items"):
            what += f", {check['items']:,} values"
        return f"exact ({what})"
    return f"NOT exact: {'; '.join(check['mismatches'][:2])}"


def _label(run: dict) -> str:
    updates, checkpoints = run.get("update_secs", 5), run.get("checkpointing_interval_ms")
    return (
        f"{run['engine']}, {run['players']:,} players"
        + ("" if updates == 5 else f", {updates} s updates")
        + ("" if checkpoints is None else f", checkpoints every {checkpoints} ms")
    )


def freshness_rows(run: dict) -> list:
    """DynamoDB raw, DynamoDB after final (with the floor), S3: (item, figure, compared
    with, value, target, met, check)."""
    written = run["dynamodb_raw_s"]["n"]
    missing = run["dynamodb_changes_not_written"]
    behind = f"; {missing:,} of {written + missing:,} changes not written before the stop" if missing else ""
    offered = f"{run['offered_per_s_after_warmup'] or 0:,.0f}/s offered, {run['read_per_s'] or 0:,.0f}/s read"
    raw95, final95 = run["dynamodb_raw_s"]["p95"], run["dynamodb_after_final_s"]["p95"]
    s3 = run["s3_raw_s"]
    rows = [
        (
            f"4 freshness DynamoDB ({_label(run)})",
            f"from arrival {_q(run['dynamodb_raw_s'])} ({written:,} changes{behind}; {offered})",
            f"max_out_of_orderness {OOO_S:.0f} s + {FRESHNESS_SLACK_S:.0f} s",
            _s(raw95),
            f"<= {OOO_S + FRESHNESS_SLACK_S:.0f} s",
            raw95 is not None and not missing and raw95 <= OOO_S + FRESHNESS_SLACK_S,
            _check(run["check"]),
        ),
        (
            f"4 freshness DynamoDB ({_label(run)})",
            f"from when its instant could first be final {_q(run['dynamodb_after_final_s'])}; "
            f"floor (arrival to final) {_q(run['dynamodb_floor_s'])}; of which watermark to ledger "
            f"{_q(run['dynamodb_final_to_ledger_s'])}, ledger to written {_q(run['dynamodb_ledger_to_written_s'])}",
            f"{FRESHNESS_SLACK_S:.0f} s after final",
            _s(final95),
            f"<= {FRESHNESS_SLACK_S:.0f} s",
            final95 is not None and not missing and final95 <= FRESHNESS_SLACK_S,
            "(same run)",
        ),
        (
            f"4 freshness S3 ({_label(run)})",
            f"after window end {_q(s3)} ({s3['n']} windows); floor {_q(run['s3_floor_s'])}; after final "
            f"{_q(run['s3_after_final_s'])}; publish call {_q(run['s3_publish_call_s'])}",
            f"window end + {OOO_S:.0f} s + {FRESHNESS_SLACK_S:.0f} s",
            _s(s3["p95"]),
            f"<= {OOO_S + FRESHNESS_SLACK_S:.0f} s",
            s3["p95"] is not None and not missing and s3["p95"] <= OOO_S + FRESHNESS_SLACK_S,
            "(same run)",
        ),
    ]
    return rows


def _memory(run: dict) -> str:
    return ", ".join(
        f"{name.split()[0] if name.startswith('python') else name} {mib:,.0f} MiB"
        for label, name, mib, _cpu in run["processes"]
        if label == "pipeline"
    )


def scale_row(run: dict) -> tuple:
    b = run["bottleneck"]
    cpu_ms = 1000 * run["pipeline_cpu_secs"] / max(1, run["records_read"])
    return (
        f"6 cost ({_label(run)})",
        f"{run['offered_per_s_after_warmup'] or 0:,.0f} events/s offered, {run['read_per_s'] or 0:,.0f}/s read "
        f"({run['unread_at_producer_end']:,} unread at the end); {run['active_players_mid_run']:,} active; "
        f"peak RSS {_memory(run)}; {run['dynamodb_writes_per_min'] or 0:,.0f} DynamoDB writes/min; "
        f"{cpu_ms:.1f} ms CPU per event; bottleneck {b.get('stage', '?').split('+')[:3]} "
        f"busy {b.get('busy_per_wall') or 0:.1f}x wall, {100 * (b.get('state_blocked_share') or 0):.0f}% "
        f"blocked on state calls",
        "its peers in this run",
        f"{run['read_per_s'] or 0:,.0f}/s",
        "(compare)",
        None,
        _check(run["check"]),
    )


def catchup_row(run: dict) -> tuple:
    ratio = run["vs_plain_read"]
    return (
        f"5 catch-up ({run['engine']}{'+' + '+'.join(run['experiments']) if run['experiments'] else ''}, "
        f"{run['events']:,} events, {run['shards']} shards)",
        f"{run['pipeline_per_s'] or 0:,.0f} events/s ({_s(run['catch_up_secs'])} from first read to last "
        f"value written; start-up {_s(run['startup_secs'])}; {1000 * run['pipeline_cpu_secs'] / run['events']:.1f} "
        f"ms CPU per event); bottleneck {run['bottleneck'].get('stage', '?').split('+')[:3]}, "
        f"{100 * (run['bottleneck'].get('state_blocked_share') or 0):.0f}% blocked on state calls",
        f"plain boto3 read {run['plain_read_per_s']:,.0f}/s",
        "n/a" if ratio is None else f"{ratio:.2f}x",
        ">= 0.5x",
        ratio is not None and ratio >= 0.5,
        _check(run["check"]),
    )


def rows(results: dict) -> list:
    """(item, figure, compared with, value, target, met, outputs)."""
    table = []
    b, m, p = results.get("bounded"), results.get("memory"), results.get("parse")
    if b:
        table += [
            (
                "1 bounded throughput",
                f"{b['pipeline_events_per_s']:,.0f} events/s ({b['events']:,} events, {b['players']:,} players)",
                f"straightforward Beam pipeline {b['baseline_events_per_s']:,.0f}/s",
                f"{b['vs_baseline']:.2f}x",
                ">= 3x",
                b["vs_baseline"] >= 3,
                _check(b["check"]),
            ),
            (
                "1 bounded throughput",
                "(same run)",
                f"SDK transform alone {b['sdk_transform_events_per_s']:,.0f}/s",
                f"{b['vs_sdk_transform']:.2f}x",
                ">= 0.5x",
                b["vs_sdk_transform"] >= 0.5,
                "(same run)",
            ),
        ]
    if p:
        table += [
            (
                "2 parse",
                f"{p['parse_lines_per_s']:,.0f} lines/s (ParseEnrichedEvents' DoFn)",
                f"SDK transform {p['sdk_transform_lines_per_s']:,.0f}/s",
                f"{p['vs_sdk_transform']:.2f}x",
                "(compare)",
                None,
                "-",
            ),
            (
                "2 parse dead letters",
                f"{p['dead_letter_lines_per_s']:,.0f} bad lines/s",
                f"good lines {p['parse_lines_per_s']:,.0f}/s",
                f"{p['dead_letter_slowdown']:.2f}x slower",
                "<= 2x",
                p["dead_letter_slowdown"] <= 2,
                "-",
            ),
        ]
    if m:
        table += [
            (
                "3 state per player",
                f"{m['state_bytes_per_player_mean']:.0f} B mean, {m['state_bytes_per_player_p99']:.0f} B p99 "
                f"({m['players']:,} active players)",
                "1 KiB",
                f"{m['state_bytes_per_player_mean'] / 1024:.2f} KiB",
                "<= 1 KiB",
                m["state_bytes_per_player_p99"] <= 1024,
                "-",
            ),
            (
                "3 memory over a steady run",
                f"RSS {m['rss_first_mib']:.0f} -> {m['rss_last_mib']:.0f} MiB over "
                f"{m['steady_minutes']:.0f} min event time (a model of the tracker)",
                "first sample after warm-up",
                f"{m['rss_growth_fraction'] * 100:+.1f}%",
                "flat",
                abs(m["rss_growth_fraction"]) <= 0.05,
                "-",
            ),
        ]
    live = results.get("live", [])
    for run in live:
        if run["engine"] in ("prism", "flink-p2"):
            table += freshness_rows(run)
    for run in results.get("live_1s", []) + results.get("flink_checkpoints", []):
        table += freshness_rows(run) + [scale_row(run)]
    for run in results.get("catchup", []):
        table.append(catchup_row(run))
    for run in live:
        table.append(scale_row(run))
    for run in results.get("experiments", []):
        table.append(catchup_row(run))
    return table


def print_table(table: list):
    headers = ("item", "figure", "compared with (same run)", "value", "target", "met", "outputs")
    cells = [headers] + [
        (a, b, c, d, e, "-" if ok is None else ("yes" if ok else "NO"), g) for a, b, c, d, e, ok, g in table
    ]
    for n, row in enumerate(cells):
        print(" | ".join(str(v) for v in row))
        if n == 0:
            print("-" * 100)


def main(argv=None):
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small inputs: check the harness (a few minutes)")
    size.add_argument(
        "--full",
        action="store_true",
        help="the biggest points too: 100,000 players live, "
        "100,000-event backlogs over 2 and 8 shards (about an hour)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated items: parse,bounded,memory,live,live-1s,flink-checkpoints,catchup",
    )
    parser.add_argument("--experiments", action="store_true", help="measure bench.experiments' changes too")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    sizes = MODES[mode]
    only = set(filter(None, args.only.split(",")))
    wanted = lambda item: not only or item in only  # noqa: E731
    started = time.time()
    results = {"mode": mode}
    work = tempfile.mkdtemp(prefix="bench-")
    try:
        if wanted("parse"):
            results["parse"] = parse.measure(lines=sizes["parse_lines"])
        if wanted("bounded"):
            results["bounded"] = bounded_throughput(work, sizes["bounded_players"], duration_secs=1800)
        if wanted("memory"):
            results["memory"] = memory.measure_in_child(players=sizes["memory_players"])
        with MotoProcess() as moto:
            if wanted("live"):
                results["live"] = []
                for players in sizes["live_players"]:
                    for engine in sizes["live_engines"]:
                        name = f"live-{engine}-{players}"
                        print(f"live: {name} ...", flush=True)
                        results["live"].append(
                            live_run(moto, work, name, engine, players, sizes["live_secs"])
                        )
            if wanted("live-1s"):
                results["live_1s"] = []
                for engine, players in sizes["live_1s"]:
                    name = f"live-{engine}-{players}-1s"
                    print(f"live, 1 s updates: {name} ...", flush=True)
                    results["live_1s"].append(
                        live_run(moto, work, name, engine, players, sizes["live_secs"], update_secs=1)
                    )
            if wanted("flink-checkpoints"):
                results["flink_checkpoints"] = []
                players = sizes["live_1s"][0][1]
                for interval in sizes["flink_checkpoint_intervals_ms"]:
                    name = f"live-flink-p2-{players}-1s-checkpoints-{interval}ms"
                    print(f"live, Flink checkpoints every {interval} ms: {name} ...", flush=True)
                    run = live_run(
                        moto,
                        work,
                        name,
                        "flink-p2",
                        players,
                        sizes["live_secs"],
                        extra_flags=[f"--checkpointing_interval={interval}"],
                        update_secs=1,
                    )
                    results["flink_checkpoints"].append({**run, "checkpointing_interval_ms": interval})
            if wanted("catchup"):
                results["catchup"] = []
                for events, shards in sizes["catchup"]:
                    for engine in sizes["catchup_engines"]:
                        name = f"catchup-{engine}-{events}-{shards}"
                        print(f"catch-up: {name} ...", flush=True)
                        results["catchup"].append(catch_up(moto, work, name, engine, events, shards))
            if args.experiments:
                results["experiments"] = []
                events = sizes["catchup"][0][0] // 2
                for n, (engine, names) in enumerate(EXPERIMENT_SETS):
                    name = f"experiment-{n}-{engine}"
                    print(f"experiment: {name} {names} ...", flush=True)
                    results["experiments"].append(catch_up(moto, work, name, engine, events, 2, names))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = rows(results)
    print_table(table)
    elapsed = time.time() - started
    load = os.getloadavg()
    print(
        f"\nbench ({mode}) took {elapsed:.0f} s on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}); load average at the end {load[0]:.1f}"
    )
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "seconds": elapsed,
        "load_average_at_end": load,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "table": [
            dict(
                zip(
                    ("item", "figure", "compared_with", "value", "target", "met", "outputs"), row, strict=True
                )
            )
            for row in table
        ],
        "results": results,
    }
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    names = [f"{stamp}-{mode}.json"] + (["latest.json"] if mode != "quick" else [])
    for name in names:
        with open(os.path.join(RESULTS, name), "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, default=str)
    print(f"written to {', '.join('bench/results/' + n for n in names)}")


if __name__ == "__main__":
    main()
