"""A seeded simulator of CodeCombat players, emitting genuine enriched-event lines.

Players arrive, play through the campaign's levels (advance, retry, go back, go idle
long enough to time out and come back, leave), and every event they send carries the
level context (schema 1-0-0 or 1-0-1). Around them: other events without the context,
duplicates, malformed lines, and arrival shuffled within a bounded out-of-orderness.

The simulator keeps its own record of what it meant (`SimulatedStream.observations`),
which the tests feed to their reference model, independently of the parser.

    python -m pipeline.apps.simulator --seed 7 --players 300 --minutes 30 --out out/events.tsv
    python -m pipeline.apps.simulator --players 200 --minutes 60 --live --stream_name enriched-good
"""

import argparse
import json
import os
import random
import sys
import time
import uuid
from typing import NamedTuple

from pipeline.apps.producer import put_records
from pipeline.aws import ClientFactory
from pipeline.rules.catalogue import campaign_levels
from pipeline.rules.observations import Observation
from pipeline.testing.enriched_lines import (
    LEVEL_CONTEXT_1_0_0,
    LEVEL_CONTEXT_1_0_1,
    enriched_line,
    level_context,
)


class SimulationSettings(NamedTuple):
    seed: int = 7
    players: int = 200
    duration_secs: int = 1800
    start_ms: int = 1_795_000_000_000  # 2026-11-18, a fixed instant so runs reproduce
    timeout_secs: int = 300
    mean_event_gap_secs: float = 8.0
    other_event_share: float = 0.3
    duplicate_share: float = 0.02
    malformed_share: float = 0.01
    max_out_of_orderness_secs: float = 10.0
    multi_context_share: float = 0.01
    early_share: float = 0.0  # share of players already arriving in the first 30 s (live demos)


class SimulatedStream(NamedTuple):
    lines: list[bytes]  # in arrival order
    observations: list[Observation]  # what the simulator meant, one per usable context
    malformed: int
    duplicates: int
    arrival_ms: list[int] = []  # when each line is sent (event time plus a bounded delay)
    line_observations: list[tuple] = []  # the observations each line carries (a duplicate: the same)


class _Emitter:
    def __init__(self, rng: random.Random, settings: SimulationSettings):
        self.rng = rng
        self.settings = settings
        self.timed_lines = []  # (event_time_ms, line, observations it carries)
        self.observations = []
        self.malformed = 0
        self.duplicates = 0

    def event_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def level_event(self, player: str, level: str, time_ms: int):
        schema = self.rng.choice((LEVEL_CONTEXT_1_0_0, LEVEL_CONTEXT_1_0_1))
        contexts = [level_context(player, level, schema=schema, level_name=level.replace("-", " ").title())]
        usable = [(player, level)]
        if self.rng.random() < self.settings.multi_context_share:
            # A second context in the same event: unusable (no user), or the same player again.
            if self.rng.random() < 0.5:
                contexts.append(level_context(None, level))
            else:
                contexts.append(level_context(player, level, schema=schema))
                usable.append((player, level))
        event_id = self.event_id()
        skew_ms = self.rng.randint(-3000, 3000)  # device clocks are wrong; collector's is not
        line = enriched_line(event_id, time_ms, contexts, dvce_created_ms=time_ms + skew_ms)
        meant = tuple(Observation(who, where, time_ms, event_id, i) for i, (who, where) in enumerate(usable))
        self.observations.extend(meant)
        self.timed_lines.append((time_ms, line.encode("utf-8"), meant))
        if self.rng.random() < self.settings.duplicate_share:
            self.timed_lines.append((time_ms, line.encode("utf-8"), meant))
            self.duplicates += 1
        if self.rng.random() < self.settings.other_event_share:
            other = enriched_line(self.event_id(), time_ms + 1, [], event="page_view")
            self.timed_lines.append((time_ms + 1, other.encode("utf-8"), ()))
        if self.rng.random() < self.settings.malformed_share:
            self.timed_lines.append((time_ms, self.malformed_line(line), ()))
            self.malformed += 1

    def malformed_line(self, good: str) -> bytes:
        kind = self.rng.randrange(5)
        if kind == 0:
            return good.rsplit("\t", 1)[0].encode()  # 130 fields
        if kind == 1:
            return (good + "\textra").encode()  # 132 fields
        if kind == 2:
            return good.replace('"data":[', '"data":[{', 1).encode()  # invalid JSON in contexts
        if kind == 3:
            return b"\xff\xfe" + good.encode()[2:]  # not UTF-8
        # null user_id in every level context: one left usable would still count
        return good.replace('"user_id":"', '"user_id":null,"x":"').encode()


def _play(emitter: _Emitter, player: str, levels: list[str], start_ms: int, end_ms: int):
    rng, settings = emitter.rng, emitter.settings
    gap_ms = settings.mean_event_gap_secs * 1000
    index = rng.choice((0, 0, 0, rng.randrange(len(levels))))  # most start at the beginning
    now = start_ms
    while now < end_ms:
        for _ in range(1 + int(rng.expovariate(1 / 5))):  # events while playing one level
            emitter.level_event(player, levels[index], now)
            now += max(1, int(rng.expovariate(1 / gap_ms)))
            if now >= end_ms:
                return
        roll = rng.random()
        if roll < 0.62:
            index = min(index + 1, len(levels) - 1)  # advance
        elif roll < 0.74:
            pass  # retry the same level
        elif roll < 0.80:
            index = max(index - 1, 0)  # go back
        elif roll < 0.88:
            now += settings.timeout_secs * 1000 + rng.randint(1, 600_000)  # idle, time out, return
        else:
            return  # leave the game


def simulate(settings: SimulationSettings = SimulationSettings()) -> SimulatedStream:
    rng = random.Random(settings.seed)
    emitter = _Emitter(rng, settings)
    levels = campaign_levels()
    end_ms = settings.start_ms + settings.duration_secs * 1000
    for number in range(settings.players):
        if rng.random() < settings.early_share:
            arrival = settings.start_ms + rng.randrange(30_000)
        else:
            arrival = settings.start_ms + rng.randrange(int(settings.duration_secs * 1000 * 0.8))
        _play(emitter, f"player-{number:05d}", levels, arrival, end_ms)
    # Arrival order: event time plus a delay below the out-of-orderness bound, so no
    # record is later than the bound allows.
    bound_ms = settings.max_out_of_orderness_secs * 1000
    keyed = sorted(
        (int(t + rng.random() * bound_ms), i, line, meant)
        for i, (t, line, meant) in enumerate(emitter.timed_lines)
    )
    return SimulatedStream(
        [line for _, _, line, _ in keyed],
        emitter.observations,
        emitter.malformed,
        emitter.duplicates,
        [arrival for arrival, _, _, _ in keyed],
        [meant for _, _, _, meant in keyed],
    )


def write_lines(path: str, lines: list[bytes]) -> None:
    with open(path, "wb") as handle:
        for line in lines:
            handle.write(line + b"\n")


# --- To Kinesis ----------------------------------------------------------------------


def kinesis_client(region: str, endpoint_url: str | None):
    return ClientFactory("kinesis", region, endpoint_url)()


class TruthWriter:
    """The observations of the lines sent so far, once each, as JSON lines."""

    def __init__(self, path: str | None):
        self._handle = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115 - closed in close()
        self._seen = set()

    def add(self, meant_per_line):
        if self._handle is None:
            return
        for meant in meant_per_line:
            for observation in meant:
                key = (observation.event_id, observation.index)
                if key not in self._seen:
                    self._seen.add(key)
                    self._handle.write(json.dumps(observation._asdict()) + "\n")
        self._handle.flush()

    def close(self):
        if self._handle is not None:
            self._handle.close()


def send_live(stream: SimulatedStream, send, truth: TruthWriter, now_ms=lambda: int(time.time() * 1000)):
    """Sends each line when its arrival time comes (real time), a batch every 200 ms."""
    sent = 0
    total = len(stream.lines)
    while sent < total:
        due = sent
        current = now_ms()
        while due < total and stream.arrival_ms[due] <= current:
            due += 1
        if due > sent:
            send(stream.lines[sent:due])
            truth.add(stream.line_observations[sent:due])
            sent = due
        else:
            time.sleep(min(0.2, max(0.0, (stream.arrival_ms[sent] - current) / 1000)))
    return sent


def main(argv: list | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="random seed; the same seed gives the same lines")
    parser.add_argument("--players", type=int, default=200, help="number of players (default 200)")
    parser.add_argument("--minutes", type=float, default=30, help="simulated duration (default 30)")
    parser.add_argument(
        "--event_gap_secs",
        type=float,
        default=8.0,
        help="mean seconds between a playing player's events: the event rate (default 8)",
    )
    parser.add_argument(
        "--timeout_secs", type=int, default=300, help="idle players stay away longer than this"
    )
    parser.add_argument(
        "--max_out_of_orderness_secs", type=float, default=10.0, help="arrival shuffle bound (default 10)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="file to write the enriched TSV lines to (a backfill)")
    target.add_argument("--stream_name", help="Kinesis stream to put the lines to (PutRecords)")
    parser.add_argument("--aws_region", default="us-east-1", help="with --stream_name (default us-east-1)")
    parser.add_argument("--aws_endpoint_url", default=None, help="with --stream_name: e.g. moto's address")
    parser.add_argument(
        "--live",
        action="store_true",
        help="event times from now on, each line sent when its time comes (with --stream_name)",
    )
    parser.add_argument("--truth", help="optional JSON-lines file of the observations sent")
    args = parser.parse_args(argv)
    if args.players <= 0 or args.minutes <= 0 or args.event_gap_secs <= 0:
        sys.exit("error: --players, --minutes and --event_gap_secs must be positive")
    if args.live and not args.stream_name:
        sys.exit("error: --live sends to a stream: give --stream_name")
    settings = SimulationSettings(
        seed=args.seed,
        players=args.players,
        duration_secs=int(args.minutes * 60),
        timeout_secs=args.timeout_secs,
        mean_event_gap_secs=args.event_gap_secs,
        max_out_of_orderness_secs=args.max_out_of_orderness_secs,
        **({"start_ms": int(time.time() * 1000), "early_share": 0.5} if args.live else {}),
    )
    stream = simulate(settings)
    summary = (
        f"{len(stream.lines)} lines ({len(stream.observations)} observations, "
        f"{stream.duplicates} duplicates, {stream.malformed} malformed)"
    )
    truth = TruthWriter(args.truth)
    try:
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            write_lines(args.out, stream.lines)
            truth.add(stream.line_observations)
            print(f"{summary} -> {args.out}")
            return
        client = kinesis_client(args.aws_region, args.aws_endpoint_url)
        if args.live:
            print(f"{summary} over {args.minutes:g} min, live -> stream {args.stream_name}", flush=True)
            sent = send_live(stream, lambda lines: put_records(client, args.stream_name, lines), truth)
        else:
            put_records(client, args.stream_name, stream.lines)
            truth.add(stream.line_observations)
            sent = len(stream.lines)
        print(f"sent {sent} lines to stream {args.stream_name}", flush=True)
    except KeyboardInterrupt:
        print("simulator stopped", flush=True)
    finally:
        truth.close()


if __name__ == "__main__":
    main()
