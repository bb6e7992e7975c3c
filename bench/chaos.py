"""Network faults between the pipeline and AWS, the long versions, with a live feed.

    python -m bench.chaos [--scenarios outage,latency,cut,beyond_bound] [--fault_secs 60]

Each scenario: moto in its own process; Toxiproxy in front of it (the pipeline's
--aws_endpoint_url is the proxy; the simulator and the checks talk to moto directly); the
simulator sending live players for --feed_minutes; the pipeline on Prism reading the
2-shard stream from its start and writing DynamoDB and S3, ending once the feed has
stopped (--stop_when_idle_secs). One minute into the feed the fault starts:

  outage        AWS unreachable for --fault_secs: connections refused for the first half,
                reset for the second; then back
  latency       2 s added to every reply for --fault_secs
  cut           every connection cut in the middle of its first reply (mid-headers: the
                request carried out, the reply lost) for --fault_secs
  beyond_bound  AWS unreachable for longer than pipeline.aws.RETRY_FOR_SECS: the pipeline
                must fail loudly; then a restart with the same flags, AWS back

and AWS refusing, injected into the pipeline's own process (pipeline.testing.chaos.AwsFaults,
from the first call it concerns), no proxy:

  dynamodb_throttled   every UpdateItem ThrottlingException for --fault_secs
  s3_slowdown          every write of a history object 503 SlowDown for --fault_secs
  kinesis_bursts       GetRecords ProvisionedThroughputExceeded on 40 calls in a row, then
                       ExpiredIterator on 20 in a row (counted from the fault's start)

Figures per scenario: whether tables, history and dead letters equal the model of what
the simulator sent; the exit code; retries as the pipeline's metrics counted them; how
far the ledger fell behind the wall clock (the status object's closed_until) and how
long after the fault it was caught up again; for beyond_bound, how long after the
outage began the pipeline failed. Table on stdout, JSON in bench/results/chaos.json.
"""

import argparse
import contextlib
import json
import os
import threading
import time

from bench.common import ROOT
from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, TruthWriter, send_live, simulate
from pipeline.aws import RETRY_FOR_SECS, RETRY_FOR_SECS_ENV
from pipeline.rules.times import parse_iso_ms
from pipeline.testing.aws_server import DUMMY_CREDENTIALS
from pipeline.testing.chaos import (
    FaultRun,
    Toxiproxy,
    dynamodb_throttling,
    faults_env,
    kinesis_expired_iterators,
    kinesis_throttling,
    missing_toxiproxy_reason,
    moto_process,
    s3_slow_down,
)

PROXY_SCENARIOS = ("outage", "latency", "cut", "beyond_bound")
REFUSING_SCENARIOS = ("dynamodb_throttled", "s3_slowdown", "kinesis_bursts")
SCENARIOS = PROXY_SCENARIOS + REFUSING_SCENARIOS
FAULT_AT_SECS = 60
CAUGHT_UP_LAG_SECS = 30  # closed_until within this of the wall clock counts as caught up


class LagProbe:
    """Samples the pipeline's status object every second: (wall ms, closed_until ms)."""

    def __init__(self, run: FaultRun):
        self.run = run
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self):
        while not self._stop.wait(1.0):
            closed = parse_iso_ms(self.run.status().get("closed_until"))
            if closed is not None:
                self.samples.append((int(time.time() * 1000), closed))

    def max_lag_secs(self, since_ms=None, until_ms=None) -> float | None:
        lags = [(w - c) / 1000 for w, c in self.samples if (since_ms or 0) <= w <= (until_ms or w)]
        return round(max(lags), 1) if lags else None

    def caught_up_after_secs(self, since_ms: int) -> float | None:
        """Seconds after `since_ms` until the lag was back under CAUGHT_UP_LAG_SECS."""
        for wall, closed in self.samples:
            if wall >= since_ms and (wall - closed) / 1000 <= CAUGHT_UP_LAG_SECS:
                return round((wall - since_ms) / 1000, 1)
        return None


def refusing_faults(scenario: str, fault_secs: float) -> list:
    """From FAULT_AT_SECS into the feed (the pipeline starts with it)."""
    after = FAULT_AT_SECS
    if scenario == "dynamodb_throttled":
        return [dynamodb_throttling(secs=fault_secs, after_secs=after)]
    if scenario == "s3_slowdown":
        return [s3_slow_down(secs=fault_secs, key_contains="history/", after_secs=after)]
    return [
        kinesis_throttling(calls=range(1, 41), after_secs=after),
        kinesis_expired_iterators(calls=range(60, 80), after_secs=after),
    ]


def fault_context(proxy, scenario: str, fault_secs: float):
    if scenario in REFUSING_SCENARIOS:
        return contextlib.nullcontext()  # injected in the pipeline's process, from its start
    if scenario == "latency":
        return proxy.slow(2000)
    if scenario == "cut":
        return proxy.cutting_responses(100)
    return proxy.down()


def run_scenario(scenario: str, args, workdir: str) -> dict:
    name = f"chaos-{scenario.replace('_', '-')}"
    with (
        moto_process(os.path.join(workdir, f"{name}-moto.log")) as (endpoint, _moto),
        Toxiproxy(log_path=os.path.join(workdir, f"{name}-toxiproxy.log")) as toxiproxy,
    ):
        proxy = toxiproxy.proxy(name, endpoint.removeprefix("http://"))
        settings = SimulationSettings(
            seed=41,
            players=args.players,
            duration_secs=int(args.feed_minutes * 60),
            start_ms=int(time.time() * 1000) + 20_000,
            mean_event_gap_secs=4.0,
            max_out_of_orderness_secs=8.0,  # under the pipeline's 10 s: sending adds a little
            early_share=0.5,
        )
        stream = simulate(settings)
        bound = args.bound_secs if scenario == "beyond_bound" else RETRY_FOR_SECS
        env = {RETRY_FOR_SECS_ENV: str(bound)}
        pipeline_endpoint = proxy.endpoint
        if scenario in REFUSING_SCENARIOS:
            env.update(faults_env(*refusing_faults(scenario, args.fault_secs)))
            pipeline_endpoint = endpoint
        run = FaultRun(endpoint, pipeline_endpoint, name, workdir, env=env)
        run.create()
        sender = run.client("kinesis")
        feed = threading.Thread(
            target=send_live,
            args=(stream, lambda lines: put_records(sender, name, lines), TruthWriter(None)),
            daemon=True,
        )
        feed.start()
        # The pipeline starts with the feed: started earlier, on a stream still empty, it
        # would find the stream idle and stop (--stop_when_idle_secs) before any record.
        time.sleep(max(0.0, settings.start_ms / 1000 - time.time()))
        run.start("--stop_when_idle_secs=5")
        result = {"scenario": scenario, "lines": len(stream.lines), "fault_secs": args.fault_secs}
        try:
            with LagProbe(run) as lag:
                run.wait_for(
                    "the feed's first minute",
                    lambda: time.time() * 1000 > settings.start_ms + FAULT_AT_SECS * 1000,
                )
                fault_start = int(time.time() * 1000)
                with fault_context(proxy, scenario, args.fault_secs):
                    if scenario == "beyond_bound":
                        failed = run.finish(timeout_secs=bound + 600)
                        result["first_run_exit"] = failed.returncode
                        result["failed_after_secs"] = round((time.time() * 1000 - fault_start) / 1000, 1)
                        result["failed_loudly"] = failed.returncode != 0 and "AwsCallFailed" in failed.log
                    else:
                        time.sleep(args.fault_secs)
                fault_end = int(time.time() * 1000)
                if scenario == "beyond_bound":
                    run.start("--stop_when_idle_secs=5")
                feed.join()
                finished = run.finish(timeout_secs=1800)
                result["lag_before_fault_secs"] = lag.max_lag_secs(until_ms=fault_start)
                result["max_lag_secs"] = lag.max_lag_secs(since_ms=fault_start)
                result["caught_up_after_fault_secs"] = lag.caught_up_after_secs(fault_end)
        finally:
            run.stop()
        problems = run.outputs_problems(stream.observations, stream.malformed)
        result.update(
            {
                "exit": finished.returncode,
                "exact": not problems,
                "problems": problems,
                "run_secs": round(finished.seconds, 1),
                "retries": {
                    key: finished.metrics.get(key, 0)
                    for key in (
                        "kinesis_retries",
                        "kinesis_throttled_calls",
                        "object_retries",
                        "dynamodb_retries",
                    )
                },
                "status_dynamodb_retries": run.status().get("dynamodb_retries"),
                "injected_faults": finished.metrics.get("injected_faults", 0),
            }
        )
        return result


def table(results: list) -> str:
    rows = [
        "| scenario | fault | outputs | exit | retries (Kinesis / S3 / DynamoDB) | max lag | caught up after the fault | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        retries = r["retries"]
        notes = ""
        if r["scenario"] == "beyond_bound":
            notes = (
                f"first run failed loudly: {r['failed_loudly']} (exit {r['first_run_exit']}, "
                f"{r['failed_after_secs']} s after the outage began); restart with the same flags"
            )
        rows.append(
            f"| {r['scenario']} | {r['fault_secs']} s | {'equal to the model' if r['exact'] else 'DIFFERENT'} | "
            f"{r['exit']} | {retries['kinesis_retries'] + retries['kinesis_throttled_calls']} / "
            f"{retries['object_retries']} / {retries['dynamodb_retries']} | {r['max_lag_secs']} s | "
            f"{r['caught_up_after_fault_secs']} s | {notes} |"
        )
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {SCENARIOS}")
    parser.add_argument("--fault_secs", type=float, default=60, help="how long each fault lasts (default 60)")
    parser.add_argument(
        "--feed_minutes", type=float, default=4, help="how long the simulator sends (default 4)"
    )
    parser.add_argument("--players", type=int, default=150, help="simulated players (default 150)")
    parser.add_argument(
        "--bound_secs",
        type=float,
        default=RETRY_FOR_SECS,
        help=f"beyond_bound: the retry bound the pipeline runs with (default pipeline.aws.RETRY_FOR_SECS, {RETRY_FOR_SECS:g})",
    )
    parser.add_argument(
        "--workdir", default=os.path.join(ROOT, "out", "chaos"), help="logs (default out/chaos)"
    )
    args = parser.parse_args(argv)
    reason = missing_toxiproxy_reason()
    if reason:
        raise SystemExit(reason)
    os.environ.update(DUMMY_CREDENTIALS)
    os.makedirs(args.workdir, exist_ok=True)
    results = []
    for scenario in args.scenarios.split(","):
        print(f"{scenario}...", flush=True)
        results.append(run_scenario(scenario.strip(), args, args.workdir))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "chaos.json"), "w", encoding="utf-8") as handle:
        json.dump({"results": results, "measured_at": time.time()}, handle, indent=1)


if __name__ == "__main__":
    main()
