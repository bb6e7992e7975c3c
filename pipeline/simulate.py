"""A seeded simulator of CodeCombat players, emitting genuine enriched-event lines.

Players arrive, play through the campaign's levels (advance, retry, go back, go idle
long enough to time out and come back, leave), and every event they send carries the
level context (schema 1-0-0 or 1-0-1). Around them: other events without the context,
duplicates, malformed lines, and arrival shuffled within a bounded out-of-orderness.

The simulator keeps its own record of what it meant (`SimulatedStream.observations`),
which the tests feed to their reference model, independently of the parser.

    python -m pipeline.simulate --seed 7 --players 300 --minutes 30 --out out/events.tsv
"""

import argparse
import json
import os
import random
import sys
import uuid
from importlib import resources
from typing import NamedTuple

from pipeline.enriched import LEVEL_CONTEXT_1_0_0, LEVEL_CONTEXT_1_0_1, enriched_line, level_context
from pipeline.events import Observation


def campaign_levels() -> list[str]:
    """The level slugs in campaign order, from the package's data file."""
    text = resources.files("pipeline").joinpath("data/levels.json").read_text(encoding="utf-8")
    return json.loads(text)["levels"]


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


class SimulatedStream(NamedTuple):
    lines: list[bytes]  # in arrival order
    observations: list[Observation]  # what the simulator meant, one per usable context
    malformed: int
    duplicates: int


class _Emitter:
    def __init__(self, rng: random.Random, settings: SimulationSettings):
        self.rng = rng
        self.settings = settings
        self.timed_lines = []  # (event_time_ms, line)
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
        self.timed_lines.append((time_ms, line.encode("utf-8")))
        for index, (who, where) in enumerate(usable):
            self.observations.append(Observation(who, where, time_ms, event_id, index))
        if self.rng.random() < self.settings.duplicate_share:
            self.timed_lines.append((time_ms, line.encode("utf-8")))
            self.duplicates += 1
        if self.rng.random() < self.settings.other_event_share:
            other = enriched_line(self.event_id(), time_ms + 1, [], event="page_view")
            self.timed_lines.append((time_ms + 1, other.encode("utf-8")))
        if self.rng.random() < self.settings.malformed_share:
            self.timed_lines.append((time_ms, self.malformed_line(line)))
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
        return good.replace('"user_id":"', '"user_id":null,"x":"', 1).encode()  # null user_id


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
        arrival = settings.start_ms + rng.randrange(int(settings.duration_secs * 1000 * 0.8))
        _play(emitter, f"player-{number:05d}", levels, arrival, end_ms)
    # Arrival order: event time plus a delay below the out-of-orderness bound, so no
    # record is later than the bound allows.
    bound_ms = settings.max_out_of_orderness_secs * 1000
    keyed = [(t + rng.random() * bound_ms, i, line) for i, (t, line) in enumerate(emitter.timed_lines)]
    keyed.sort()
    return SimulatedStream(
        [line for _, _, line in keyed], emitter.observations, emitter.malformed, emitter.duplicates
    )


def write_lines(path: str, lines: list[bytes]) -> None:
    with open(path, "wb") as handle:
        for line in lines:
            handle.write(line + b"\n")


def main(argv: list | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="random seed; the same seed gives the same lines")
    parser.add_argument("--players", type=int, default=200, help="number of players (default 200)")
    parser.add_argument("--minutes", type=float, default=30, help="simulated duration (default 30)")
    parser.add_argument(
        "--timeout_secs", type=int, default=300, help="idle players stay away longer than this"
    )
    parser.add_argument("--out", required=True, help="file to write the enriched TSV lines to")
    parser.add_argument("--truth", help="optional JSON-lines file of the observations meant")
    args = parser.parse_args(argv)
    if args.players <= 0 or args.minutes <= 0:
        sys.exit("error: --players and --minutes must be positive")
    settings = SimulationSettings(
        seed=args.seed,
        players=args.players,
        duration_secs=int(args.minutes * 60),
        timeout_secs=args.timeout_secs,
    )
    stream = simulate(settings)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_lines(args.out, stream.lines)
    if args.truth:
        with open(args.truth, "w", encoding="utf-8") as handle:
            for observation in stream.observations:
                handle.write(json.dumps(observation._asdict()) + "\n")
    print(
        f"{len(stream.lines)} lines ({len(stream.observations)} observations, "
        f"{stream.duplicates} duplicates, {stream.malformed} malformed) -> {args.out}"
    )


if __name__ == "__main__":
    main()
