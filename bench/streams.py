"""What the stream items share: generated traffic put into moto's Kinesis (all at once,
or each record at its arrival time), a plain boto3 read of the same stream, the
pipeline's flags per engine, and when each update instant could first be final.

The floor of freshness: the value as of update instant t is final once the watermark
passes t, i.e. once every shard has delivered a record with event time >= t +
max_out_of_orderness (the reader's watermark is, per shard, the latest event time read
minus the out-of-orderness, and the pipeline's is the minimum over shards). So
`could_be_final(t)` = the latest, over shards, of the first arrival of such a record.
"""

import bisect
import hashlib
import threading
import time
import zlib

from pipeline.apps.producer import partition_key, put_records
from pipeline.apps.simulator import SimulationSettings, simulate
from pipeline.rules.observations import BadLine, decode_line, event_time_ms

UPDATE_MS = 5000
WINDOW_MS = 60_000
OUT_OF_ORDERNESS_MS = 10_000  # pipeline.main's default, which the bench keeps
FLINK_JOB_SERVER = "FlinkRunner"


def engine_flags(engine: str) -> list:
    """pipeline.main's flags for an engine label: "prism", "flink-p1", "flink-p2"."""
    if engine == "prism":
        return []
    parallelism = engine.rsplit("-p", 1)[1]
    return [f"--runner={FLINK_JOB_SERVER}", "--flink_master=[local]", f"--parallelism={parallelism}"]


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


class FirstAfter:
    """rows of (instant, wall time): the earliest wall time among rows whose instant is at
    or after a given instant (suffix minima, so each query is a bisection)."""

    def __init__(self, rows):
        rows = sorted(rows)
        self.instants = [instant for instant, _ in rows]
        self.earliest = [wall for _, wall in rows]
        for i in range(len(rows) - 2, -1, -1):
            self.earliest[i] = min(self.earliest[i], self.earliest[i + 1])

    def __call__(self, instant_ms):
        n = bisect.bisect_left(self.instants, instant_ms)
        return self.earliest[n] if n < len(self.earliest) else None


def line_time_ms(line: bytes):
    try:
        return event_time_ms(decode_line(line).split("\t"))
    except (BadLine, IndexError, ValueError):
        return None


def traffic(players: int, duration_secs: int, start_ms: int, seed: int, event_gap_secs: float = 4.0):
    """Simulated players who are all in the game from the start (early_share 1), one
    event every `event_gap_secs` each on average: about players * 0.2 records/s at 4 s."""
    return simulate(
        SimulationSettings(
            seed=seed,
            players=players,
            duration_secs=duration_secs,
            start_ms=start_ms,
            early_share=1.0,
            mean_event_gap_secs=event_gap_secs,
        )
    )


def shard_of(kinesis, stream_name: str):
    """line -> shard id, as Kinesis (and moto) route a record: by the MD5 of its
    partition key within the shards' hash key ranges."""
    ranges = sorted(
        (int(s["HashKeyRange"]["StartingHashKey"]), s["ShardId"])
        for s in kinesis.list_shards(StreamName=stream_name)["Shards"]
    )
    starts = [start for start, _ in ranges]

    def route(line: bytes) -> str:
        key = int(hashlib.md5(partition_key(line).encode("utf-8")).hexdigest(), 16)
        return ranges[bisect.bisect_right(starts, key) - 1][1]

    return route


def plain_read(client, stream: str, expected: int) -> tuple[int, float]:
    """A boto3 loop that only reads: every shard from TRIM_HORIZON, 10,000 records per
    GetRecords (the pipeline's --max_records; 1,000 read as fast: 13,807 and 14,111
    records/s against 13,790 and 14,331 on 30k records, 2026-12-05), until all are read."""
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
            answer = client.get_records(ShardIterator=iterators[shard], Limit=10000)
            read += len(answer["Records"])
            iterators[shard] = answer.get("NextShardIterator")
            if not iterators[shard]:
                del iterators[shard]
    return read, time.perf_counter() - started


class LiveProducer(threading.Thread):
    """Puts each line into the stream once the wall clock reaches its arrival time (minus
    `offset_ms`: the traffic is generated before the pipeline is up, then replayed from
    when it is), in arrival order, and notes when each was accepted. Stops at the
    arrival time `end_ms`."""

    def __init__(self, kinesis, stream_name: str, stream, end_ms: int, offset_ms: int = 0):
        super().__init__(daemon=True)
        self.kinesis, self.stream_name, self.stream = kinesis, stream_name, stream
        self.end_ms, self.offset_ms = end_ms, offset_ms
        self.accepted = []  # wall time (s) each line was accepted, in order
        self.behind_ms = 0  # how late the producer itself was, at worst

    def run(self):
        lines, arrivals = self.stream.lines, self.stream.arrival_ms
        index = 0
        while index < len(lines):
            now_ms = time.time() * 1000 + self.offset_ms  # on the traffic's clock
            if now_ms >= self.end_ms:
                break
            due = index
            while due < len(lines) and arrivals[due] <= now_ms:
                due += 1
            if due > index:
                self.behind_ms = max(self.behind_ms, now_ms - arrivals[index])
                self.accepted += put_records(self.kinesis, self.stream_name, lines[index:due])
                index = due
            else:
                time.sleep(min(0.05, max(0.0, (arrivals[index] - now_ms) / 1000)))


class Finality:
    """could_be_final(instant): when, on the wall clock, the last shard delivered its
    first record with event time >= instant + out_of_orderness (None: not while
    records were sent)."""

    def __init__(self, times_ms: list, shards: list, accepted: list, out_of_orderness_ms: int):
        per_shard = {}
        for time_ms, shard, wall in zip(times_ms, shards, accepted, strict=False):
            if time_ms is not None:
                per_shard.setdefault(shard, []).append((wall, time_ms))
        # Per shard: the running maximum of event time, against the arrival wall time.
        self.curves = []
        for rows in per_shard.values():
            rows.sort()
            walls, maxima, best = [], [], None
            for wall, time_ms in rows:
                if best is None or time_ms > best:
                    best = time_ms
                    walls.append(wall)
                    maxima.append(best)
            self.curves.append((walls, maxima))
        self.ooo = out_of_orderness_ms

    def could_be_final(self, instant_ms: int):
        latest = None
        for walls, maxima in self.curves:
            n = bisect.bisect_left(maxima, instant_ms + self.ooo)
            if n == len(maxima):
                return None
            latest = walls[n] if latest is None else max(latest, walls[n])
        return latest
