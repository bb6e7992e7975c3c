"""Soak: the streaming pipeline on Prism under a steady live load, its memory and its
freshness sampled every 10 s, its outputs checked against the model at the end.

    python -m bench.soak --minutes 30        (the soak)
    python -m bench.soak --minutes 5         (the short version)

What runs, each in its own process so each is measured alone:
* moto's server (the embedded AWS: a 2-shard Kinesis stream, DynamoDB, S3);
* the pipeline, `pipeline.main` as `make run` runs it (TRIM_HORIZON, DynamoDB and S3,
  the contract's defaults: 300 s timeout, 60 s windows, 5 s updates, 10 s out-of-order),
  and the Prism binary it starts;
* this process: the simulator's players (pipeline.apps.simulator's own player model),
  arriving steadily at --rate events per second in all (players of an hour's warm-up
  are already playing when the soak starts, so the load is flat from the first minute),
  each line put to the stream when its arrival time comes.

Every 10 s: the resident memory (RSS) and CPU of the pipeline's Python process, of Prism
and of moto, and the pipeline's status object (closed_until: the latest update instant
the ledger closed, so wall clock minus it is how stale the tables are). Once the feed
stops, the pipeline finishes (--stop_when_idle_secs: every player times out) and its
tables, history and dead letters are compared with the model of what was sent.

Memory is judged over the last two thirds of the run (minutes 10-30 of 30): growth =
(mean RSS of its last minute - mean RSS of its first minute) / the first, target < 5%;
and beside it the same from a least-squares line through every sample of those minutes
(its rise over the span / its value at the start), which one minute's burst (a backlog
held in flight while the reader catches up) does not swing.
moto keeps every record put to the stream (it has no retention), so its growth is data,
reported beside the bytes put. Freshness: lag percentiles and its trend (seconds per
minute) over the same span. PNG, JSON and a Markdown table under --workdir (out/soak) and
bench/results/.
"""

import argparse
import heapq
import json
import os
import random
import threading
import time

from bench.common import ROOT, percentile
from bench.png_plot import COLOURS, Panel, Series, write_chart
from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, _Emitter, _play
from pipeline.rules.catalogue import campaign_levels
from pipeline.rules.times import parse_iso_ms
from pipeline.testing.aws_server import DUMMY_CREDENTIALS
from pipeline.testing.chaos import FaultRun, moto_process
from pipeline.testing.processes import command_line, descendants

SAMPLE_SECS = 10
# Players already playing when the soak starts: the whole sessions of players who arrived
# this long before it. Measured of 2,000 simulated sessions: p90 28 min, p99 59 min, max
# 103 min, so from the first minute the rate is within about 1% of what it settles at.
# (It was 15 minutes, with lines per player measured over a 5-minute run: the 30-minute
# soak of 2026-12-04 asked for 1,000 events/s and sent 1,000 rising to 1,230.)
WARMUP_SECS = 60 * 60
PROFILE_SESSIONS = 2000
LOOKAHEAD_MS = 30_000
SIM_OUT_OF_ORDERNESS_SECS = 8.0  # under the pipeline's 10 s: putting adds a little
GROWTH_TARGET = 0.05
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# --- The feed ------------------------------------------------------------------------------


class _MarkingEmitter(_Emitter):
    """The simulator's emitter, remembering which of the lines it made malformed must be
    dead letters: all but those whose first context lost its user_id while a second one
    still has its own (the line then still carries a usable observation, a duplicate of
    the good line's; the simulator counts it as malformed all the same)."""

    def __init__(self, rng, settings):
        super().__init__(rng, settings)
        self.malformed_lines = set()

    def malformed_line(self, good):
        line = super().malformed_line(good)
        if not (b'"user_id":null,"x":"' in line and b'"user_id":"' in line):
            self.malformed_lines.add(line)
        return line


def feed_settings(seed: int) -> SimulationSettings:
    return SimulationSettings(
        seed=seed, mean_event_gap_secs=4.0, max_out_of_orderness_secs=SIM_OUT_OF_ORDERNESS_SECS
    )


def session_profile(sessions: int = PROFILE_SESSIONS, seed: int = 7) -> tuple:
    """(lines a player sends over a whole session, seconds it takes to simulate one), the
    mean of `sessions` sessions played to their end: the feed's arrival rate is the events/s
    asked for divided by the first; the second says how long the warm-up takes to make."""
    settings = feed_settings(seed)
    emitter = _Emitter(random.Random(seed), settings)
    levels = campaign_levels()
    started = time.perf_counter()
    lines = 0
    for number in range(sessions):
        _play(emitter, f"profile-{number}", levels, 0, 2**62)
        lines += len(emitter.timed_lines)
        emitter.timed_lines.clear()
    return lines / sessions, (time.perf_counter() - started) / sessions


class SteadyFeed:
    """Players arriving as a Poisson process (rate / lines_per_player a second) from
    WARMUP_SECS before `start_ms` to `end_ms`, each playing as the simulator's players do;
    lines dated before `start_ms` are not sent. Lines are generated LOOKAHEAD_MS ahead and
    put to the stream when their arrival comes (every 200 ms)."""

    def __init__(
        self,
        client,
        stream_name: str,
        rate: float,
        start_ms: int,
        end_ms: int,
        lines_per_player: float,
        seed: int = 51,
    ):
        self.client = client
        self.stream_name = stream_name
        self.start_ms, self.end_ms = start_ms, end_ms
        self.settings = feed_settings(seed)
        self.rng = random.Random(seed)
        self.emitter = _MarkingEmitter(self.rng, self.settings)
        self.levels = campaign_levels()
        self.players_per_ms = rate / lines_per_player / 1000
        self.next_player_ms = start_ms - WARMUP_SECS * 1000
        self.players = 0
        self.pending = []  # heap of (arrival ms, seq, line, observations)
        self.seq = 0
        self.truth = {}  # (event_id, index) -> Observation, of the lines sent
        self.sent = 0
        self.malformed_sent = 0
        self.malformed_sent_lines = []  # to name the missing ones, should any be
        self.bytes_sent = 0
        self.stopped = threading.Event()
        self.error = None

    def _generate_until(self, until_ms: int) -> None:
        while self.next_player_ms <= min(until_ms, self.end_ms):
            before = len(self.emitter.timed_lines)
            _play(
                self.emitter, f"soak-{self.players:07d}", self.levels, int(self.next_player_ms), self.end_ms
            )
            self.players += 1
            for time_ms, line, meant in self.emitter.timed_lines[before:]:
                if time_ms < self.start_ms:
                    continue  # the warm-up: played, not sent
                arrival = int(time_ms + self.rng.random() * SIM_OUT_OF_ORDERNESS_SECS * 1000)
                heapq.heappush(self.pending, (arrival, self.seq, line, meant))
                self.seq += 1
            del self.emitter.timed_lines[before:]
            self.next_player_ms += self.rng.expovariate(self.players_per_ms)

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                now = int(time.time() * 1000)
                self._generate_until(now + LOOKAHEAD_MS)
                due = []
                while self.pending and self.pending[0][0] <= now:
                    due.append(heapq.heappop(self.pending))
                if due:
                    put_records(self.client, self.stream_name, [line for _, _, line, _ in due])
                    for _, _, line, meant in due:
                        self.sent += 1
                        self.bytes_sent += len(line)
                        if line in self.emitter.malformed_lines:
                            self.malformed_sent += 1
                            self.malformed_sent_lines.append(line)
                            self.emitter.malformed_lines.discard(line)
                        for observation in meant:
                            self.truth.setdefault((observation.event_id, observation.index), observation)
                if now >= self.end_ms and not self.pending:
                    return
                time.sleep(max(0.0, 0.2 - (time.time() * 1000 - now) / 1000))
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            self.error = error


def dead_letter_differences(run, malformed_lines) -> list:
    """Which malformed lines sent have no dead letter, and which dead letters were not
    expected (the first few of each, cut), to tell a loss from a wrong expectation."""
    from pipeline.rules.observations import printable
    from pipeline.testing.outputs import read_dead_letter_lines

    written = [
        json.loads(line)
        for line in read_dead_letter_lines(f"s3://{run.bucket}/dead-letters", run.client("s3"))
    ]
    sent = {printable(line): line for line in malformed_lines}
    lines_written = {letter["line"] for letter in written}
    missing = [line for text, line in sent.items() if text not in lines_written]
    unexpected = [letter for letter in written if letter["line"] not in sent]
    return [f"no dead letter for: {line[:400]!r}" for line in missing[:5]] + [
        f"unexpected dead letter: {json.dumps(letter)[:400]}" for letter in unexpected[:5]
    ]


# --- Processes ------------------------------------------------------------------------------


def rss_and_cpu(pid: int) -> tuple:
    """(RSS MiB, CPU seconds used so far) of one process, or (None, None) once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            rss = int(handle.read().split()[1]) * PAGE / 2**20
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS
        return rss, cpu
    except (OSError, IndexError, ValueError):
        return None, None


class Sampler:
    """Every SAMPLE_SECS: RSS and CPU of each role, the pipeline's status, the feed."""

    def __init__(self, roles: dict, run: FaultRun, feed: SteadyFeed, start_ms: int):
        self.roles = roles  # name -> callable giving its pids now
        self.run = run
        self.feed = feed
        self.start_ms = start_ms
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._cpu = {}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)

    def sample(self) -> dict:
        now = time.time()
        row = {"minute": round((now * 1000 - self.start_ms) / 60_000, 3), "sent": self.feed.sent}
        for role, pids in self.roles.items():
            rss_total, cpu_total = None, None
            for pid in pids():
                rss, cpu = rss_and_cpu(pid)
                if rss is not None:
                    rss_total = (rss_total or 0) + rss
                    cpu_total = (cpu_total or 0) + cpu
            row[f"{role}_rss_mib"] = None if rss_total is None else round(rss_total, 1)
            previous = self._cpu.get(role)
            if cpu_total is not None and previous is not None:
                row[f"{role}_cpu_share"] = round((cpu_total - previous[1]) / (now - previous[0]), 3)
            if cpu_total is not None:
                self._cpu[role] = (now, cpu_total)
        status = self.run.status()
        closed = parse_iso_ms(status.get("closed_until"))
        row["lag_secs"] = None if closed is None else round(now - closed / 1000, 1)
        row["behind_latest_ms"] = status.get("behind_latest_ms")
        row["records_read"] = status.get("records_read")
        row["pipeline_records_per_sec"] = status.get("pipeline_records_per_sec")
        row["load_average"] = round(os.getloadavg()[0], 2)
        return row

    def _loop(self):
        while True:
            self.samples.append(self.sample())
            if self._stop.wait(SAMPLE_SECS):
                return


# --- Summary ---------------------------------------------------------------------------------


def growth(samples: list, key: str, from_minute: float, to_minute: float) -> dict | None:
    values = [
        (s["minute"], s[key])
        for s in samples
        if s.get(key) is not None and from_minute <= s["minute"] <= to_minute
    ]
    if len(values) < 3:
        return None
    first = [v for m, v in values if m <= from_minute + 1] or [values[0][1]]
    last = [v for m, v in values if m >= to_minute - 1] or [values[-1][1]]
    start, end = sum(first) / len(first), sum(last) / len(last)
    slope = slope_per_minute(values)
    fitted_start = sum(v for _, v in values) / len(values) - slope * (
        sum(m for m, _ in values) / len(values) - from_minute
    )
    return {
        "first_mib": round(start, 1),
        "last_mib": round(end, 1),
        "max_mib": round(max(v for _, v in values), 1),
        "growth": round((end - start) / start, 4),
        "fitted_growth": round(slope * (to_minute - from_minute) / fitted_start, 4),
    }


def slope_per_minute(points: list) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return None if not var else round(sum((x - mx) * (y - my) for x, y in points) / var, 3)


def summarise(samples: list, minutes: float, roles) -> dict:
    window = (minutes / 3, minutes)
    memory = {role: growth(samples, f"{role}_rss_mib", *window) for role in roles}
    lags = [
        (s["minute"], s["lag_secs"])
        for s in samples
        if s.get("lag_secs") is not None and window[0] <= s["minute"] <= minutes
    ]
    lag_values = [v for _, v in lags]
    cpu = {
        role: round(sum(v) / len(v), 2)
        for role in roles
        if (
            v := [
                s[f"{role}_cpu_share"]
                for s in samples
                if s.get(f"{role}_cpu_share") is not None and s["minute"] <= minutes
            ]
        )
    }
    return {
        "window_minutes": [round(w, 1) for w in window],
        "memory": memory,
        "lag_secs": {
            "p50": percentile(lag_values, 0.5),
            "p95": percentile(lag_values, 0.95),
            "max": max(lag_values) if lag_values else None,
            "trend_secs_per_minute": slope_per_minute(lags),
        },
        "cpu_cores": cpu,
        "load_average_mean": round(sum(s["load_average"] for s in samples) / len(samples), 2)
        if samples
        else None,
    }


def plot(samples: list, path: str, roles, minutes: float) -> None:
    def rss(role: str) -> Series:
        return Series(
            role.upper(),
            COLOURS[roles.index(role)],
            [(s["minute"], s[f"{role}_rss_mib"]) for s in samples if s.get(f"{role}_rss_mib")],
        )

    lag = [
        Series(
            "WALL CLOCK - CLOSED_UNTIL, WHILE THE FEED RUNS",
            COLOURS[2],
            [
                (s["minute"], s["lag_secs"])
                for s in samples
                if s.get("lag_secs") is not None and s["minute"] <= minutes
            ],
        )
    ]
    rate = [
        Series(
            "SENT PER SECOND",
            COLOURS[3],
            [
                (b["minute"], (b["sent"] - a["sent"]) / max(1e-9, (b["minute"] - a["minute"]) * 60))
                for a, b in zip(samples, samples[1:], strict=False)
            ],
        )
    ]
    panels = [Panel("RESIDENT MEMORY (MIB)", [rss(role) for role in roles if role != "moto"])]
    if "moto" in roles:
        # moto keeps every record put (gigabytes by the end): on the same axis it flattens
        # the pipeline's line, whose growth is what the soak is about.
        panels.append(Panel("MOTO, THE EMBEDDED AWS: RESIDENT MEMORY (MIB)", [rss("moto")]))
    panels += [Panel("FRESHNESS: LAG (S)", lag), Panel("LOAD: EVENTS SENT PER SECOND", rate)]
    write_chart(path, panels)


def table(summary: dict, result: dict) -> str:
    rows = [
        f"Soak of {result['minutes']:g} min at {result['events_per_sec']:,.0f} events/s sent "
        f"({result['sent']:,} lines, {result['bytes_sent'] / 2**20:,.0f} MiB); outputs "
        f"{'equal to the model' if result['exact'] else 'DIFFERENT: ' + '; '.join(result['problems'])}; "
        f"pipeline exit {result['exit']}; load average {summary['load_average_mean']} on {os.cpu_count()} cores.",
        "",
        f"| process | RSS at minute {summary['window_minutes'][0]:g} | at minute {summary['window_minutes'][1]:g} | max | growth | growth (fitted) | CPU (cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for role, memory in summary["memory"].items():
        if memory is None:
            continue
        rows.append(
            f"| {role} | {memory['first_mib']:,} MiB | {memory['last_mib']:,} MiB | {memory['max_mib']:,} MiB | "
            f"{memory['growth'] * 100:+.1f}% | {memory['fitted_growth'] * 100:+.1f}% | "
            f"{summary['cpu_cores'].get(role, '—')} |"
        )
    lag = summary["lag_secs"]
    rows += [
        "",
        f"Freshness (wall clock - closed_until, minutes {summary['window_minutes'][0]:g}-{summary['window_minutes'][1]:g}): "
        f"p50 {lag['p50']} s, p95 {lag['p95']} s, max {lag['max']} s, trend {lag['trend_secs_per_minute']} s per minute.",
    ]
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="how long the feed runs (default 30)")
    parser.add_argument("--rate", type=float, default=1000, help="events per second sent (default 1000)")
    parser.add_argument(
        "--workdir", default=os.path.join(ROOT, "out", "soak"), help="logs, PNG, JSON (default out/soak)"
    )
    args = parser.parse_args(argv)
    os.environ.update(DUMMY_CREDENTIALS)
    os.makedirs(args.workdir, exist_ok=True)
    label = f"soak-{args.minutes:g}min"
    roles = ("pipeline", "prism", "moto")
    with moto_process(os.path.join(args.workdir, f"{label}-moto.log")) as (endpoint, moto):
        run = FaultRun(endpoint, endpoint, label, args.workdir)
        run.create()
        lines_per_player, play_secs = session_profile()
        warmup_players = args.rate / lines_per_player * WARMUP_SECS
        start_ms = int(time.time() * 1000) + 15_000 + int(2 * warmup_players * play_secs * 1000)
        end_ms = start_ms + int(args.minutes * 60_000)
        feed = SteadyFeed(run.client("kinesis"), label, args.rate, start_ms, end_ms, lines_per_player)
        feed._generate_until(start_ms)  # the warm-up's players, before anything is timed
        sender = threading.Thread(target=feed.run, daemon=True)
        while time.time() * 1000 < start_ms:
            time.sleep(0.1)
        sender.start()
        # The pipeline starts once the stream has records (it reads from the stream's
        # start, so it misses none): with --stop_when_idle_secs=10 a pipeline started
        # before the first record once found the stream silent 10 s and stopped.
        while feed.sent == 0 and sender.is_alive():
            time.sleep(0.05)
        run.start("--stop_when_idle_secs=10")
        pipeline_pid = run.process.pid
        pids = {
            "pipeline": lambda: [pipeline_pid],
            "prism": lambda: [p for p in descendants(pipeline_pid) if "prism" in command_line(p)],
            "moto": lambda: [moto.pid],
        }
        try:
            with Sampler(pids, run, feed, start_ms) as sampler:
                sender.join()
                if feed.error is not None:
                    raise feed.error
                finished = run.finish(timeout_secs=3600)
        finally:
            feed.stopped.set()
            run.stop()
        samples = sampler.samples
        problems = run.outputs_problems(list(feed.truth.values()), feed.malformed_sent)
        if any(problem.startswith("dead letters") for problem in problems):
            problems += dead_letter_differences(run, feed.malformed_sent_lines)
    result = {
        "minutes": args.minutes,
        "events_per_sec": feed.sent / (args.minutes * 60),
        "rate_asked": args.rate,
        "lines_per_player": lines_per_player,
        "sent": feed.sent,
        "bytes_sent": feed.bytes_sent,
        "players": feed.players,
        "exit": finished.returncode,
        "exact": not problems,
        "problems": problems,
        "run_secs": round(finished.seconds, 1),
        "metrics": finished.metrics,
    }
    summary = summarise(samples, args.minutes, roles)
    plot(samples, os.path.join(args.workdir, f"{label}.png"), roles, args.minutes)
    text = table(summary, result)
    print(text)
    record = {"result": result, "summary": summary, "samples": samples, "measured_at": time.time()}
    for directory in (args.workdir, os.path.join(ROOT, "bench", "results")):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{label}.json"), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)
    with open(os.path.join(args.workdir, f"{label}.md"), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    print(f"\nplot: {os.path.join(args.workdir, label + '.png')}")


if __name__ == "__main__":
    main()
