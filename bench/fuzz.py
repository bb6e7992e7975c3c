"""Randomised end-to-end runs against the contract: streams and flags nobody chose.

    python -m bench.fuzz [--cases 12] [--seed N] [--live_share 0.3] [--case K]

Each case draws its own stream (players, event gaps, arrival disorder within the
bound, duplicates, malformed lines, events with two level contexts), its own shards and
its own flags (timeout, window, update interval, out-of-orderness), then runs
`pipeline.main` on Prism against moto's server, as a user would:

- a backlog: everything put before the run (or half of it, the rest while it starts),
  the run SIGKILLed after a few seconds or not at all, then run again with the same
  flags to the end;
- live (a share of the cases): records put at their arrival times on the wall clock,
  event times now, the run SIGKILLed once or twice while the feed goes and restarted at
  once with the same flags, the last run ending once the feed has stopped.

Every case ends checked against the reference model: every history window, the
transitions table's totals with every level back at 0, and every malformed line in the
dead letters exactly once. A case is drawn from (seed, index) alone, so `--seed S --case
K` runs case K of a failed campaign again. Results: bench/results/fuzz.json.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

import boto3

from bench.common import CHILD_ENV, ROOT
from bench.streams import LiveProducer
from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, simulate
from pipeline.testing.aws_server import REGION, make_stream
from pipeline.testing.chaos import moto_process
from pipeline.testing.crash import run_to_be_killed
from pipeline.testing.many_pairs import restart_command
from pipeline.testing.outputs import assert_outputs_equal_model

RUN_TIMEOUT_SECS = 1200
LIVE_IDLE_STOP_SECS = 45  # the last live run ends this long after the feed: above any gap in it


def draw_case(seed: int, index: int, live_share: float) -> dict:
    """A case's settings, from (seed, index) alone."""
    rng = random.Random(f"{seed}/{index}")
    window = rng.choice([10, 20, 30, 60])
    out_of_orderness = rng.choice([1, 2, 5, 10, 30])
    timeout = rng.choice([20, 45, 60, 120, 300])
    live = rng.random() < live_share
    duration = rng.randrange(120, 200) if live else rng.randrange(120, 1200)
    return {
        "case": index,
        "stream_seed": rng.randrange(10**6),
        "live": live,
        "shards": rng.choice([1, 2, 3, 4]),
        "players": rng.randrange(40, 120) if live else rng.randrange(5, 120),
        "duration_secs": duration,
        "event_gap_secs": rng.choice([1.0, 4.0, 8.0]) if live else rng.choice([1.0, 4.0, 8.0, 20.0]),
        "timeout_secs": timeout,
        "players_idle_secs": rng.choice([timeout, timeout, 300]),  # the simulator's idea of a timeout
        "window_secs": window,
        "update_secs": rng.choice([u for u in (1, 2, 5, 10) if window % u == 0]),
        "max_out_of_orderness_secs": out_of_orderness,
        "disorder_secs": rng.choice([out_of_orderness, out_of_orderness / 2, 0.0]),
        "duplicate_share": rng.choice([0.0, 0.02, 0.2]),
        "malformed_share": rng.choice([0.0, 0.01, 0.05]),
        "multi_context_share": rng.choice([0.0, 0.01, 0.1]),
        # backlog: SIGKILL this many seconds in (None: no kill), half of it put as the run
        # starts; Prism is up about 3 s in, and a few thousand lines are read within seconds
        "kill_after_secs": rng.choice([None, 3.0, 4.0, 5.0, 6.0, 8.0]),
        "half_put_while_running": rng.random() < 0.3,
        # live: SIGKILL at these seconds after the run's start (the feed starts 10 s in and
        # ends at 10 + duration; the run ends LIVE_IDLE_STOP_SECS after that)
        "kills_at_secs": sorted(round(rng.uniform(8, duration + 30), 1) for _ in range(rng.choice([1, 2]))),
    }


def simulated(case: dict, start_ms: int | None = None):
    settings = SimulationSettings(
        seed=case["stream_seed"],
        players=case["players"],
        duration_secs=case["duration_secs"],
        timeout_secs=case["players_idle_secs"],
        mean_event_gap_secs=case["event_gap_secs"],
        duplicate_share=case["duplicate_share"],
        malformed_share=case["malformed_share"],
        max_out_of_orderness_secs=case["disorder_secs"],
        multi_context_share=case["multi_context_share"],
    )
    if start_ms is not None:  # live: event times now, every player in within 30 s
        settings = settings._replace(start_ms=start_ms, early_share=1.0)
    return simulate(settings)


def pipeline_command(endpoint: str, name: str, case: dict) -> list:
    idle_stop = LIVE_IDLE_STOP_SECS if case["live"] else 3
    case_flags = [
        f"--max_out_of_orderness_secs={case['max_out_of_orderness_secs']}",
        f"--timeout_secs={case['timeout_secs']}",
        f"--window_secs={case['window_secs']}",
        f"--update_secs={case['update_secs']}",
        f"--dead_letter_path=s3://{name}/dead-letters",
        f"--stop_when_idle_secs={idle_stop}",
    ]
    return restart_command(endpoint, REGION, name, f"s3://{name}/snapshots", case_flags, stop_when_idle=False)


def run_to_end(command: list, feed_more=None) -> None:
    process = subprocess.Popen(
        command, cwd=ROOT, env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if feed_more:
        feed_more()
    _, err = process.communicate(timeout=RUN_TIMEOUT_SECS)
    if process.returncode != 0:
        raise AssertionError(f"exit {process.returncode}: {err[-3000:]}")


def run_backlog(endpoint: str, name: str, case: dict, kinesis):
    stream = simulated(case)
    lines = stream.lines
    split = len(lines) // 2 if case["half_put_while_running"] else len(lines)
    put_records(kinesis, name, lines[:split])
    rest = lines[split:]
    command = pipeline_command(endpoint, name, case)
    if case["kill_after_secs"] is not None:
        with run_to_be_killed(command, ROOT) as victim:
            if rest:
                put_records(kinesis, name, rest)
                rest = []
            time.sleep(case["kill_after_secs"])
            case["kills"] = int(victim.poll() is None)  # a small stream may be done by then
    run_to_end(command, (lambda: put_records(kinesis, name, rest)) if rest else None)
    return stream


def run_live(endpoint: str, name: str, case: dict, kinesis):
    stream = simulated(case, start_ms=int(time.time() * 1000) + 10_000)
    feed = LiveProducer(kinesis, name, stream, end_ms=2**62)
    feed.start()
    command = pipeline_command(endpoint, name, case)
    began = time.monotonic()
    case["kills"] = len(case["kills_at_secs"])
    for kill_at in case["kills_at_secs"]:
        with run_to_be_killed(command, ROOT) as victim:
            while time.monotonic() - began < kill_at:
                if victim.poll() is not None:
                    raise AssertionError(f"a live run ended by itself {time.monotonic() - began:.0f} s in")
                time.sleep(0.2)
    run_to_end(command)
    feed.join(timeout=10)
    return stream


def check(endpoint: str, name: str, case: dict, stream) -> None:
    history = assert_outputs_equal_model(
        boto3.client("s3", endpoint_url=endpoint, region_name=REGION),
        boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION),
        name,
        (f"{name}-transitions", f"{name}-levels"),
        stream.observations,
        stream.malformed,
        case["timeout_secs"],
        case["window_secs"],
    )
    case["windows"], case["lines"] = len(history), len(stream.lines)


def run_case(endpoint: str, seed: int, case: dict) -> None:
    name = f"fuzz-{seed}-{case['case']}"
    kinesis = make_stream(endpoint, name, shards=case["shards"])
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=name)
    started = time.monotonic()
    stream = (run_live if case["live"] else run_backlog)(endpoint, name, case, kinesis)
    case["run_secs"] = round(time.monotonic() - started, 1)
    check(endpoint, name, case, stream)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None, help="default: drawn, and printed")
    parser.add_argument("--live_share", type=float, default=0.3)
    parser.add_argument("--case", type=int, default=None, help="run only this case of the seed's campaign")
    args = parser.parse_args(argv)
    os.environ.update(CHILD_ENV)  # the runs killed and restarted inherit it: moto's credentials
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    indexes = [args.case] if args.case is not None else range(args.cases)
    print(f"seed {seed}: {len(indexes)} cases", flush=True)
    results = []
    with moto_process(os.path.join(ROOT, "out", "fuzz-moto.log")) as (endpoint, _):
        for index in indexes:
            case = draw_case(seed, index, args.live_share)
            try:
                run_case(endpoint, seed, case)
                case["exact"] = True
            except Exception as error:  # noqa: BLE001 - a failed case is reported, the others still run
                case["exact"], case["problem"] = False, f"{type(error).__name__}: {error}"[:3000]
            results.append(case)
            print(
                f"case {index}: {'exact' if case['exact'] else 'DIFFERENT'} "
                + json.dumps({k: v for k, v in case.items() if k not in ("case", "exact")}),
                flush=True,
            )
    failed = [c["case"] for c in results if not c["exact"]]
    summary = {
        "seed": seed,
        "cases": len(results),
        "exact": len(results) - len(failed),
        "failed": failed,
        "live": sum(c["live"] for c in results),
        "kills_of_a_running_pipeline": sum(c.get("kills", 0) for c in results),
    }
    with open(os.path.join(ROOT, "bench", "results", "fuzz.json"), "w") as handle:
        json.dump({"summary": summary, "cases": results, "measured_at": time.time()}, handle, indent=1)
    print(
        f"{summary['exact']} of {summary['cases']} cases exact ({summary['live']} live; "
        f"{summary['kills_of_a_running_pipeline']} SIGKILLs of a running pipeline, each restarted)"
        + (f"; again: python -m bench.fuzz --seed {seed} --case K, K in {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
