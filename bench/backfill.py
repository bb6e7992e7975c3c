"""Issue 14's figures (throughput), each beside what it is compared with in the same run.

    python -m bench.backfill [--quick] [--only engines,coalescing,ledger,restart] [--rounds N]

- engines: a bounded replay of one file (>= 100k lines) by `pipeline.main` on each
  engine and mode a bounded replay can use, and by the straightforward Beam pipeline
  (bench/baseline.py), interleaved round by round; the history objects of every run
  byte for byte equal to the single-process run's, and equal to the reference model.
- coalescing: DynamoDB UpdateItem requests per 1,000 events while a pipeline on Prism
  catches up on a Kinesis backlog, with catch-up writes coalesced (as shipped) and
  without (each key written once per update instant, as before); tables equal to the
  model in both.
- ledger: the ledger's cost per update instant at 1,000 levels and 50,000 transition
  pairs: the rules' step, and the state the KeepLedger DoFn reads and writes per wake.
- restart: the same size end to end (not in the default run: about 15 minutes): 50,000
  players each taking a pair no other takes across 1,000 levels, read from Kinesis on
  Prism, SIGKILLed once the checkpoint is split into parts (the last fifth of the stream
  is put only then), restarted; the tables and the history equal to the model, the
  final checkpoint read back.

Every pipeline runs in a fresh child process (`python -m bench.backfill child ...`),
timed without its imports. The machine may be shared: ratios measured minutes apart in
one run mean more than the absolute rates. Prints a table and returns the figures as a
dict (each item is a function: `engines(work)`, `coalescing(work)`, `ledger_cost()`).
"""

import argparse
import json
import logging
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time

from pipeline.testing.aws_server import DUMMY_CREDENTIALS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> extra pipeline.main flags; "default" is what a user gets with no flags.
ENGINES = {
    "default": [],
    "fnapi-1-process": ["--runner=FnApiRunner"],
    "fnapi-2-processes": [
        "--runner=FnApiRunner",
        "--direct_num_workers=2",
        "--direct_running_mode=multi_processing",
    ],
    "prism": ["--runner=PrismRunner"],
}


# --- children -------------------------------------------------------------------------


def _child(kind: str, args: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.backfill", "child", kind, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, **DUMMY_CREDENTIALS, "PYTHONPATH": ROOT},
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"child {kind} failed ({done.returncode}):\n{done.stderr[-4000:]}")


def _run_child(kind: str, args: dict) -> dict:
    """In the child: one measured run."""
    if kind == "main":
        from pipeline.main import run

        if not args.get("coalesce", True):
            from pipeline.transforms import keep_ledger

            keep_ledger.coalesce_updates = list  # every key once per update instant, as before
        writes = _count_update_items()
        started = time.perf_counter()
        run(args["argv"])
        return {"seconds": time.perf_counter() - started, "update_items": len(writes)}
    if kind == "baseline":
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions

        from bench.baseline import build

        started = time.perf_counter()
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
            build(pipeline, args["input"], args["output"])
        return {"seconds": time.perf_counter() - started}
    raise ValueError(kind)


def _count_update_items() -> list:
    """Wraps the sink's UpdateItem helper to note every value and checkpoint-head request."""
    from pipeline.sinks import dynamodb

    log, original = [], dynamodb.write_item

    def counted(client, write, *args, **kwargs):
        log.append(write.table)
        return original(client, write, *args, **kwargs)

    dynamodb.write_item = counted
    return log


# --- engines --------------------------------------------------------------------------


def engines(work: str, players: int = 5000, duration_secs: int = 1800, rounds: int = 3) -> dict:
    """Seconds per engine (median of `rounds`, interleaved), lines/s, and ratios against the
    straightforward pipeline and the single-process FnApiRunner."""
    from pipeline.apps.simulator import SimulationSettings, simulate, write_lines
    from pipeline.testing.outputs import assert_history_equals_model, read_history, read_history_bytes

    stream = simulate(SimulationSettings(seed=1, players=players, duration_secs=duration_secs))
    path = os.path.join(work, "backfill.tsv")
    write_lines(path, stream.lines)
    lines = len(stream.lines)
    seconds = {name: [] for name in [*ENGINES, "baseline"]}
    outputs = {}
    for round_ in range(rounds):
        for name, flags in ENGINES.items():
            out = os.path.join(work, f"out-{name}-{round_}")
            result = _child("main", {"argv": [f"--input={path}", f"--snapshot_path={out}", *flags]})
            seconds[name].append(result["seconds"])
            outputs[name] = read_history_bytes(out)
            if name == "default":
                assert_history_equals_model(read_history(out), stream.observations, 300, 60)
        result = _child("baseline", {"input": path, "output": os.path.join(work, f"baseline-{round_}/sums")})
        seconds["baseline"].append(result["seconds"])
    reference = outputs["fnapi-1-process"]
    figures = {"lines": lines, "players": players, "rounds": rounds, "engines": {}}
    baseline = statistics.median(seconds["baseline"])
    single = statistics.median(seconds["fnapi-1-process"])
    for name, times in seconds.items():
        median = statistics.median(times)
        figures["engines"][name] = {
            "seconds": median,
            "all_seconds": times,
            "lines_per_s": lines / median,
            "vs_baseline": baseline / median,
            "vs_fnapi_1_process": single / median,
            "history_identical": None if name == "baseline" else outputs[name] == reference,
        }
    return figures


def print_engines(figures: dict) -> None:
    print(
        f"\nbounded replay of {figures['lines']:,} lines ({figures['players']:,} players), "
        f"median of {figures['rounds']} interleaved rounds"
    )
    print(f"  {'engine':<20} {'seconds':>8} {'lines/s':>9} {'vs baseline':>12} {'vs 1 process':>13}  history")
    for name, f in figures["engines"].items():
        same = {None: "-", True: "identical", False: "DIFFERENT"}[f["history_identical"]]
        print(
            f"  {name:<20} {f['seconds']:8.1f} {f['lines_per_s']:9,.0f} {f['vs_baseline']:11.2f}x "
            f"{f['vs_fnapi_1_process']:12.2f}x  {same}"
        )


# --- coalescing -----------------------------------------------------------------------


def coalescing(work: str, players: int = 250, duration_secs: int = 2400) -> dict:
    """UpdateItems per 1,000 events catching up on a backlog of `duration_secs` of event
    time (the dense backlog of tests/test_engines.py), coalesced and not."""
    import boto3

    from pipeline.apps.producer import put_records
    from pipeline.apps.simulator import SimulationSettings, simulate
    from pipeline.testing.aws_server import MotoServer
    from pipeline.testing.many_pairs import catch_up_flags
    from pipeline.testing.outputs import assert_tables_equal_model

    settings = SimulationSettings(
        seed=11,
        players=players,
        duration_secs=duration_secs,
        max_out_of_orderness_secs=20,
        duplicate_share=0.05,
        malformed_share=0.01,
    )
    stream = simulate(settings)
    figures = {"events": len(stream.lines), "event_time_minutes": duration_secs / 60}
    with MotoServer() as moto:
        for label, coalesce in (("coalesced", True), ("per_instant", False)):
            name = f"backlog-{label.replace('_', '-')}"
            put_records(moto.make_stream(name, shards=2), name, stream.lines)
            argv = catch_up_flags(
                moto.endpoint, name, f"{work}/{name}", ["--max_out_of_orderness_secs=20", "--max_records=500"]
            )
            result = _child("main", {"argv": argv, "coalesce": coalesce})
            dynamodb = boto3.client("dynamodb", endpoint_url=moto.endpoint, region_name="us-east-1")
            assert_tables_equal_model(dynamodb, f"{name}-transitions", f"{name}-levels", stream.observations)
            figures[label] = {
                "update_items": result["update_items"],
                "per_1000_events": 1000 * result["update_items"] / len(stream.lines),
                "seconds": result["seconds"],
            }
    figures["fewer"] = figures["per_instant"]["update_items"] / figures["coalesced"]["update_items"]
    return figures


def print_coalescing(figures: dict) -> None:
    c, p = figures["coalesced"], figures["per_instant"]
    print(
        f"\nDynamoDB UpdateItems catching up on a backlog of {figures['events']:,} events "
        f"({figures['event_time_minutes']:.0f} min of event time), Prism"
    )
    print(f"  per instant (before): {p['update_items']:6,} = {p['per_1000_events']:6.1f} per 1,000 events")
    print(f"  coalesced (now):      {c['update_items']:6,} = {c['per_1000_events']:6.1f} per 1,000 events")
    print(f"  {figures['fewer']:.1f}x fewer")


# --- ledger cost ----------------------------------------------------------------------


def _timed(call, repeat: int) -> float:
    """Median milliseconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def ledger_cost(levels: int = 1000, pairs: int = 50_000, repeat: int = 15) -> dict:
    """Milliseconds per update instant (one live wake) of a ledger of `levels` levels and
    `pairs` transition pairs: the rules' step with 200 keys changing, the state write
    and read of the ledger (pickling, as the state coder does; with an engine's state
    cache, Beam also weighs the value), and a backlog wake of one hour of instants."""
    from pipeline.rules.ledger import LEVEL, TRANSITION, IntervalSum, Ledger, advance_ledger
    from pipeline.runtime.beam_patches import _deep_size_without_module_walk
    from pipeline.transforms.keep_ledger import _StoredLedger

    rng = random.Random(2)
    names = [f"campaign-level-{i:04d}" for i in range(levels)]
    totals = {}
    while len(totals) < pairs:
        a, b = rng.sample(names + [""], 2)
        totals[f"{a}/{b}"] = rng.randrange(1, 10**6)
    keys = list(totals)
    update_ms, window_ms = 5000, 60_000
    start = 1_795_000_000_000
    ledger = Ledger(
        tuple((name, rng.randrange(1, 50)) for name in sorted(names)), totals, (), start + update_ms, start
    )

    def sums_at(instant):
        return [IntervalSum(TRANSITION, key, instant, 1) for key in rng.sample(keys, 150)] + [
            IntervalSum(LEVEL, name, instant, rng.choice((-1, 1))) for name in rng.sample(names, 50)
        ]

    live = sums_at(start + window_ms)  # a window end: snapshot and checkpoint too
    figures = {"levels": levels, "pairs": pairs}
    figures["live_step_ms"] = _timed(
        lambda: advance_ledger(
            ledger._replace(next_instant_ms=start + window_ms), live, start + window_ms, update_ms, window_ms
        ),
        repeat,
    )
    in_state = _StoredLedger(ledger)
    stored = pickle.dumps(in_state, protocol=pickle.HIGHEST_PROTOCOL)
    figures["state_bytes"] = len(stored)
    figures["state_write_ms"] = _timed(
        lambda: pickle.dumps(in_state, protocol=pickle.HIGHEST_PROTOCOL), repeat
    )
    figures["state_read_ms"] = _timed(lambda: pickle.loads(stored), repeat)
    figures["state_cache_weigh_ms"] = _timed(lambda: _deep_size_without_module_walk(in_state), repeat)
    figures["state_cache_weigh_walked_ms"] = _timed(lambda: _deep_size_without_module_walk(ledger), 3)
    hour = [s for i in range(1, 721) for s in sums_at(start + i * update_ms)]
    figures["backlog_hour_step_ms"] = _timed(
        lambda: advance_ledger(ledger, hour, start + 720 * update_ms, update_ms, window_ms), 3
    )
    return figures


# A key's value is written once per update instant it changed in; with 1,000 levels about
# 1,000 keys change per 5 s instant (levels, entries, exits), 300,000 UpdateItems over the
# stream, which moto's single server takes half an hour to serve. A minute's grid keeps
# the run to minutes and writes every one of the 50,000 pairs all the same.
RESTART_FLAGS = ("--update_secs=60",)


def restart_at_size(work: str, pairs: int = 50_000, levels: int = 1000, extra_flags=RESTART_FLAGS) -> dict:
    """A run over `pairs` distinct transition pairs killed once its checkpoint is in parts,
    then restarted (pipeline.testing.many_pairs); outputs checked against the model."""
    import boto3

    from pipeline.rules.tables import PIPELINE_NAME
    from pipeline.sinks.dynamodb import read_checkpoint
    from pipeline.testing.aws_server import REGION, MotoServer
    from pipeline.testing.many_pairs import kill_after_checkpoint_in_parts_then_restart, many_pairs_stream
    from pipeline.testing.outputs import assert_history_equals_model, assert_tables_equal_model, read_history

    lines, observations = many_pairs_stream(players=pairs, levels=levels)
    name = "many-pairs"
    out = f"{work}/many-pairs"
    with MotoServer() as moto:
        moto.make_stream(name, shards=2)
        figures = kill_after_checkpoint_in_parts_then_restart(
            moto.endpoint, REGION, name, lines, observations, out, extra_flags, timeout_secs=3600
        )
        dynamodb = boto3.client("dynamodb", endpoint_url=moto.endpoint, region_name=REGION)
        assert_history_equals_model(read_history(out), observations, 300, 60)
        assert_tables_equal_model(dynamodb, f"{name}-transitions", f"{name}-levels", observations)
        started = time.perf_counter()
        final = read_checkpoint(dynamodb, f"{name}-progress")
        figures["checkpoint_read_ms"] = (time.perf_counter() - started) * 1000
        head = dynamodb.get_item(TableName=f"{name}-progress", Key={"pipeline": {"S": PIPELINE_NAME}})
    figures.update(
        events=len(lines),
        levels=levels,
        transition_pairs=len(final.transition_totals),
        final_parts=int(head["Item"].get("parts", {"N": "0"})["N"]),  # 0: all in the head item
        outputs_exact=True,  # the assertions above passed
        flags=list(extra_flags),
    )
    return figures


def print_restart(figures: dict) -> None:
    print(
        f"\nrestart at {figures['transition_pairs']:,} transition pairs over {figures['levels']:,} levels "
        f"({figures['events']:,} events, Prism)"
    )
    print(
        f"  killed {figures['killed_after_secs']:.0f} s in, with a checkpoint in "
        f"{figures['parts_when_killed']} parts; the restart ran {figures['restart_secs']:.0f} s to the end"
    )
    print(
        f"  final checkpoint: {figures['final_parts']} parts, read back in {figures['checkpoint_read_ms']:.0f} ms; "
        f"tables and history equal to the model: {'yes' if figures['outputs_exact'] else 'NO'}"
    )


def print_ledger(figures: dict) -> None:
    print(f"\nledger of {figures['levels']:,} levels and {figures['pairs']:,} transition pairs, per wake")
    print(f"  rules, one live update instant (a window end):  {figures['live_step_ms']:7.1f} ms")
    print(
        f"  state write (pickle, {figures['state_bytes'] / 1e6:.1f} MB):                {figures['state_write_ms']:7.1f} ms"
    )
    print(f"  state read (unpickle):                           {figures['state_read_ms']:7.1f} ms")
    print(
        f"  state cache weighing (engines with a cache):     {figures['state_cache_weigh_ms']:7.1f} ms "
        f"(walking every entry: {figures['state_cache_weigh_walked_ms']:.1f} ms)"
    )
    print(f"  rules, a backlog wake of one hour (720 instants): {figures['backlog_hour_step_ms']:6.1f} ms")


# --- main -----------------------------------------------------------------------------

ITEMS = ("engines", "coalescing", "ledger")  # and "restart", asked for by name


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small inputs: checks the harness only")
    parser.add_argument(
        "--only", default=",".join(ITEMS), help=f"comma-separated subset of {ITEMS + ('restart',)}"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the engine runs")
    parser.add_argument(
        "--players", type=int, default=5000, help="engines: simulated players (5000: 220k lines)"
    )
    parser.add_argument("--minutes", type=int, default=30, help="engines: minutes of event time")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    only = set(args.only.split(","))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as work:
        if "ledger" in only:
            results["ledger"] = ledger_cost(pairs=5000 if args.quick else 50_000)
            print_ledger(results["ledger"])
        if "restart" in only:
            results["restart"] = restart_at_size(work, pairs=3000 if args.quick else 50_000)
            print_restart(results["restart"])
        if "coalescing" in only:
            results["coalescing"] = coalescing(
                work, players=50 if args.quick else 250, duration_secs=600 if args.quick else 2400
            )
            print_coalescing(results["coalescing"])
        if "engines" in only:
            results["engines"] = engines(
                work,
                players=300 if args.quick else args.players,
                duration_secs=600 if args.quick else args.minutes * 60,
                rounds=args.rounds,
            )
            print_engines(results["engines"])
    print("\nRESULTS " + json.dumps(results))
    if not args.quick:
        # The default items in backfill.json; any other choice in a file of its own.
        name = "backfill" if only == set(ITEMS) else "backfill-" + "-".join(sorted(only))
        with open(os.path.join(ROOT, "bench", "results", f"{name}.json"), "w", encoding="utf-8") as handle:
            json.dump({"when": time.time(), "load_average": os.getloadavg(), **results}, handle, indent=1)
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        logging.getLogger().setLevel(logging.ERROR)
        result = _run_child(sys.argv[2], json.loads(sys.argv[3]))
        print("RESULT " + json.dumps(result))
    else:
        main()
