"""ReadKinesisRecords: against moto's real HTTP server, against fake clients for what moto
cannot produce (throttling, expired iterators, resharding), and its rules unit by unit.

Every pipeline runs on the FnApiRunner in streaming mode (the fastest way to run the
source alone: nothing downstream waits for its watermark) and ends through
stop_when_idle_secs.
"""

import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import NamedTuple

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from pipeline.rules.observations import LATE, printable
from pipeline.rules.positions import parse_initial_position, pinned, restart_position
from pipeline.runtime import metrics
from pipeline.sources.kinesis import (
    KinesisRestriction,
    KinesisShardsTracker,
    ReadKinesisRecords,
    RecordClaim,
    ShardCursor,
    ShardEndClaim,
    StopClaim,
    UnreachableClaim,
    child_shard_ids,
    has_successor,
    lateness_bound_ms,
    place_record,
    restriction_watermark_ms,
    root_shard_ids,
    shard_iterator_request,
)
from pipeline.testing.aws_server import REGION, client, make_stream
from pipeline.testing.enriched_lines import enriched_line, level_context

STREAMING = ["--runner=FnApiRunner", "--streaming"]
HOUR_MS = 3600 * 1000


# --- Running the source and reading back what it emitted --------------------------------


class _CollectFn(beam.DoFn):
    """Writes what reaches it to one small JSON file per bundle (unbounded-safe)."""

    def __init__(self, directory, kind):
        self._directory = directory
        self._kind = kind

    def start_bundle(self):
        self._rows = []

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        row = {"position": element.position, "timestamp_us": timestamp.micros}
        if self._kind == "records":
            row["data"] = element.data.hex()
        else:
            row.update(element._asdict())
        self._rows.append(row)

    def finish_bundle(self):
        if self._rows:
            path = os.path.join(self._directory, f"{self._kind}-{uuid.uuid4().hex}.json")
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(self._rows, handle)


class Run(NamedTuple):
    records: list
    late: list
    counters: dict
    seconds: float


def _read_rows(directory, kind):
    rows = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(kind + "-"):
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                rows.extend(json.load(handle))
    return rows


def run_source(tmp_path, **kwargs) -> Run:
    out = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    pipeline = beam.Pipeline(options=PipelineOptions(STREAMING))
    outputs = pipeline | "ReadKinesis" >> ReadKinesisRecords(**kwargs)
    _ = outputs[ReadKinesisRecords.RECORDS] | "CollectRecords" >> beam.ParDo(_CollectFn(str(out), "records"))
    _ = outputs[ReadKinesisRecords.LATE] | "CollectLate" >> beam.ParDo(_CollectFn(str(out), "late"))
    started = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.monotonic() - started
    counters = {}
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    for counter in query["counters"]:
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + counter.committed
    return Run(_read_rows(out, "records"), _read_rows(out, "late"), counters, seconds)


def positions(rows):
    return [row["position"] for row in rows]


def line_at(index: int, event_ms: int, player: str) -> bytes:
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kinesis-test-{index}"))
    return enriched_line(event_id, event_ms, [level_context(player, f"level-{index % 7}")]).encode()


def now_minute_ms() -> int:
    return (int(time.time() * 1000) // 60000) * 60000


# --- moto -------------------------------------------------------------------------------


def put_all(client, stream, entries):
    """entries: [(partition_key, data)] -> [(position, partition_key, data)] in order."""
    placed = []
    for start in range(0, len(entries), 500):
        chunk = entries[start : start + 500]
        response = client.put_records(
            StreamName=stream, Records=[{"PartitionKey": key, "Data": data} for key, data in chunk]
        )
        assert response.get("FailedRecordCount", 0) == 0
        for (key, data), result in zip(chunk, response["Records"], strict=True):
            placed.append((f"{result['ShardId']}:{result['SequenceNumber']}", key, data))
    return placed


def arrival_ms_by_position(client, stream):
    found = {}
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for record in client.get_records(ShardIterator=iterator, Limit=10000)["Records"]:
            arrival = record["ApproximateArrivalTimestamp"]
            found[f"{shard['ShardId']}:{record['SequenceNumber']}"] = int(arrival.timestamp() * 1000)
    return found


def test_reads_every_record_once_at_event_time_with_late_and_garbage(moto_endpoint, tmp_path):
    stream = "kinesis-main"
    client = make_stream(moto_endpoint, stream, shards=2)
    base_ms = now_minute_ms() - HOUR_MS
    players = [f"player-{n:02d}" for n in range(20)]
    normal = [(players[i % 20], line_at(i, base_ms + i * 1000, players[i % 20])) for i in range(300)]
    # Far behind the watermark once the first batches were read (base - 1 h).
    late = [(players[i], line_at(1000 + i, base_ms - HOUR_MS + i, players[i])) for i in range(0, 20, 3)]
    garbage = [("player-00", b"\xff\xfenot utf-8\tat all"), ("player-01", b"hello\tworld")]
    placed = put_all(client, stream, normal + late + garbage)
    normal_placed, late_placed = placed[:300], placed[300 : 300 + len(late)]
    garbage_placed = placed[300 + len(late) :]
    # Precondition: every shard has more normal records than one GetRecords batch, so
    # its late records come in a later call, after the watermark moved past them.
    for shard in {p.split(":")[0] for p, _, _ in late_placed}:
        assert sum(1 for p, _, _ in normal_placed if p.startswith(shard + ":")) > 25
    latest_normal_ms = {}  # per shard: the event time every late record there is judged against
    for index, (position, _, _) in enumerate(normal_placed):
        shard = position.split(":")[0]
        latest_normal_ms[shard] = max(latest_normal_ms.get(shard, 0), base_ms + index * 1000)

    run = run_source(
        tmp_path,
        stream_name=stream,
        region=REGION,
        endpoint_url=moto_endpoint,
        initial_position="TRIM_HORIZON",
        max_records=25,
        stop_when_idle_secs=2,
    )
    print(f"\nmoto 2 shards, {len(placed)} records: {run.seconds:.2f} s wall time")

    got = positions(run.records)
    assert len(got) == len(set(got)), "a record was emitted twice"
    assert set(got) == {p for p, _, _ in normal_placed + garbage_placed}
    assert sorted(positions(run.late)) == sorted(p for p, _, _ in late_placed)

    by_position = {row["position"]: row for row in run.records}
    for index, (position, _, data) in enumerate(normal_placed):
        assert by_position[position]["timestamp_us"] == (base_ms + index * 1000) * 1000
        assert bytes.fromhex(by_position[position]["data"]) == data
    arrivals = arrival_ms_by_position(client, stream)
    for position, _, data in garbage_placed:
        assert by_position[position]["timestamp_us"] == arrivals[position] * 1000
        assert bytes.fromhex(by_position[position]["data"]) == data
    late_data = {p: (data, base_ms - HOUR_MS + i * 3) for i, (p, _, data) in enumerate(late_placed)}
    for row in run.late:
        data, event_ms = late_data[row["position"]]
        assert row["reason"] == LATE
        assert row["line"] == printable(data)
        assert row["event_time_ms"] == event_ms
        # Dated at the bound it missed (10 s, the default out-of-orderness, behind the
        # latest record before it in its shard), so its dead-letter window is still open.
        assert row["timestamp_us"] == (latest_normal_ms[row["position"].split(":")[0]] - 10_000) * 1000

    assert run.counters["kinesis_records_read"] == len(placed)
    assert run.counters["kinesis_late_records"] == len(late_placed)
    assert run.counters["kinesis_get_records_calls"] >= 6
    for shard in {p.split(":")[0] for p, _, _ in placed}:
        expected = sum(1 for p, _, _ in placed if p.startswith(shard + ":"))
        assert run.counters[f"kinesis_records_read_{shard}"] == expected


def test_at_timestamp_reads_only_records_arrived_since(moto_endpoint, tmp_path):
    stream = "kinesis-at-timestamp"
    client = make_stream(moto_endpoint, stream, shards=2)
    base_ms = now_minute_ms()
    before = put_all(client, stream, [(f"p{i}", line_at(i, base_ms + i, f"p{i}")) for i in range(10)])
    time.sleep(0.02)  # moto stamps arrival with the clock: put a gap around the boundary
    boundary = datetime.now(UTC)
    time.sleep(0.02)
    since = put_all(client, stream, [(f"p{i}", line_at(i, base_ms + i, f"p{i}")) for i in range(10, 20)])

    iso = boundary.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    run = run_source(
        tmp_path,
        stream_name=stream,
        region=REGION,
        endpoint_url=moto_endpoint,
        initial_position=f"AT_TIMESTAMP:{iso}",
        stop_when_idle_secs=1,
    )
    print(f"\nmoto AT_TIMESTAMP: {run.seconds:.2f} s wall time")
    assert sorted(positions(run.records)) == sorted(p for p, _, _ in since)
    assert not set(positions(run.records)) & {p for p, _, _ in before}


# What the LATEST test's client puts once the source has listed the shards (after the
# source pinned its start), by stream name. Module level: the factory is pickled.
_PUT_AFTER_LISTING = {}


class _ListingHook:
    """A boto3 Kinesis client that puts records right after the first ListShards."""

    def __init__(self, client, stream):
        self._client = client
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._client, name)

    def list_shards(self, **kwargs):
        response = self._client.list_shards(**kwargs)
        pending = _PUT_AFTER_LISTING[self._stream]
        with pending["lock"]:
            if not pending["placed"]:
                pending["placed"] = put_all(self._client, self._stream, pending["entries"])
        return response


class _HookedFactory:
    def __init__(self, endpoint, stream):
        self._endpoint = endpoint
        self._stream = stream

    def __call__(self):
        return _ListingHook(client("kinesis", self._endpoint), self._stream)


def test_latest_reads_only_records_put_after_start(moto_endpoint, tmp_path):
    stream = "kinesis-latest"
    client = make_stream(moto_endpoint, stream, shards=2)
    base_ms = now_minute_ms()
    old = put_all(client, stream, [(f"p{i}", line_at(i, base_ms + i, f"p{i}")) for i in range(12)])
    time.sleep(0.02)  # the start is pinned to the millisecond: keep the old ones clearly before
    entries = [(f"p{i}", line_at(i, base_ms + i, f"p{i}")) for i in range(12, 24)]
    _PUT_AFTER_LISTING[stream] = {"lock": threading.Lock(), "entries": entries, "placed": None}

    run = run_source(
        tmp_path,
        stream_name=stream,
        region=REGION,
        initial_position="LATEST",
        stop_when_idle_secs=1,
        client_factory=_HookedFactory(moto_endpoint, stream),
    )
    print(f"\nmoto LATEST: {run.seconds:.2f} s wall time")
    new = _PUT_AFTER_LISTING[stream]["placed"]
    assert new, "the hook never ran"
    assert sorted(positions(run.records)) == sorted(p for p, _, _ in new)
    assert not set(positions(run.records)) & {p for p, _, _ in old}


# --- Fake clients: what moto cannot do ---------------------------------------------------
#
# moto never throttles, never expires iterators, and after SplitShard keeps putting
# records into the parent (it never closes a shard to writes), so these tests use a fake
# client that raises botocore ClientErrors the way boto3 does and that closes parents.

_FAKES = {}


class _FakeFactory:
    """Picklable: the DoFns are pickled; the fake they talk to stays in this process."""

    def __init__(self, name):
        self._name = name

    def __call__(self):
        return _FAKES[self._name]


def client_error(code, operation):
    return ClientError({"Error": {"Code": code, "Message": f"fake {code}"}}, operation)


class FakeShard:
    def __init__(self, shard_id, records, parent=None, closed=False, visible=True, adjacent=None):
        self.shard_id = shard_id
        self.records = records  # [(sequence_number str, data bytes, arrival datetime)]
        self.parent = parent
        self.adjacent = adjacent
        self.closed = closed
        self.visible = visible


# What botocore hands back for a JSON reply cut in its headers or body: an empty answer.
EMPTY_REPLY = {"ResponseMetadata": {"HTTPStatusCode": 200}}


class Outage:
    """AWS away for a shard (or for every call when `shard` is None, ListShards too):
    from the moment `after_served` records were served, for `secs` of wall time (forever
    when None), each call raises the next of `errors` in turn (EMPTY_REPLY: answers it).
    With `lose_replies`, a GetRecords is carried out first (its records logged as served)
    and its reply lost."""

    def __init__(self, errors, shard=None, after_served=0, secs=None, lose_replies=False):
        self.errors = errors
        self.shard = shard
        self.after_served = after_served
        self.secs = secs
        self.lose_replies = lose_replies
        self.started = None
        self.failures = 0

    def error_for(self, shard_id, served) -> Exception | None:
        if self.shard is not None and shard_id != self.shard:
            return None
        if self.started is None:
            if served < self.after_served:
                return None
            self.started = time.monotonic()
        if self.secs is not None and time.monotonic() - self.started > self.secs:
            return None
        error = self.errors[self.failures % len(self.errors)]
        self.failures += 1
        return error


def unreachable():
    return EndpointConnectionError(endpoint_url="http://127.0.0.1:1")


def connection_reset():
    return ConnectionClosedError(endpoint_url="http://127.0.0.1:1")


OUTAGE_ERRORS = [
    unreachable(),
    connection_reset(),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ClientError(
        {"Error": {"Code": "InternalFailure"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "GetRecords"
    ),
    ClientError(
        {"Error": {"Code": "ServiceUnavailable"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetRecords"
    ),
]


class FakeKinesis:
    """Enough of the Kinesis API for the source, with failures on demand."""

    def __init__(self, shards, throttle_calls=(), expire=(), split_when_drained=None, outage=None):
        self.shards = {shard.shard_id: shard for shard in shards}
        self.throttle_calls = set(throttle_calls)  # get_records call numbers that throttle
        self.expire = set(expire)  # (shard_id, index) whose iterator expires once
        self.split_when_drained = split_when_drained  # (parent, children): split at its end
        self.outage = outage
        self.lock = threading.Lock()
        self.calls = 0
        self.throttled = 0
        self.listings = 0
        self.log = []  # ("iterator", shard, type, seq) | ("served", shard, seq) | ("end", shard)

    def served(self, shard_id=None) -> int:
        return sum(1 for entry in self.log if entry[0] == "served" and shard_id in (None, entry[1]))

    def _outage(self, shard_id):
        """Raises the outage's error for a call on this shard (None: ListShards), if any;
        returns EMPTY_REPLY when that is what the call answers."""
        if self.outage is not None and not self.outage.lose_replies:
            error = self.outage.error_for(shard_id, self.served(self.outage.shard))
            if error is EMPTY_REPLY:
                return dict(EMPTY_REPLY)
            if error is not None:
                raise error
        return None

    def list_shards(self, StreamName=None, NextToken=None, **_):
        with self.lock:
            cut = self._outage(None)
            if cut is not None:
                return cut
            self.listings += 1
            shards = []
            for shard in self.shards.values():
                if not shard.visible:
                    continue
                description = {"ShardId": shard.shard_id, "SequenceNumberRange": {}}
                if shard.parent:
                    description["ParentShardId"] = shard.parent
                if shard.adjacent:
                    description["AdjacentParentShardId"] = shard.adjacent
                if shard.closed and shard.records:
                    description["SequenceNumberRange"]["EndingSequenceNumber"] = shard.records[-1][0]
                shards.append(description)
            return {"Shards": shards}

    def get_shard_iterator(self, StreamName, ShardId, ShardIteratorType, StartingSequenceNumber=None, **_):
        with self.lock:
            cut = self._outage(ShardId)
            if cut is not None:
                return cut
            records = self.shards[ShardId].records
            if ShardIteratorType == "TRIM_HORIZON":
                index = 0
            elif ShardIteratorType == "AFTER_SEQUENCE_NUMBER":
                after = int(StartingSequenceNumber)
                index = next((i for i, r in enumerate(records) if int(r[0]) > after), len(records))
            else:
                raise AssertionError(f"unexpected iterator type {ShardIteratorType}")
            self.log.append(("iterator", ShardId, ShardIteratorType, StartingSequenceNumber))
            return {"ShardIterator": f"{ShardId}|{index}|{uuid.uuid4().hex}"}

    def get_records(self, ShardIterator, Limit):
        with self.lock:
            self.calls += 1
            if self.calls in self.throttle_calls:
                self.throttled += 1
                raise client_error("ProvisionedThroughputExceededException", "GetRecords")
            shard_id, index, _ = ShardIterator.split("|")
            index = int(index)
            cut = self._outage(shard_id)
            if cut is not None:
                return cut
            if (shard_id, index) in self.expire:
                self.expire.discard((shard_id, index))
                raise client_error("ExpiredIteratorException", "GetRecords")
            shard = self.shards[shard_id]
            batch = shard.records[index : index + Limit]
            end = index + len(batch)
            for sequence, _, _ in batch:
                self.log.append(("served", shard_id, sequence))
            if (
                self.split_when_drained
                and shard_id == self.split_when_drained[0]
                and end == len(shard.records)
            ):
                shard.closed = True  # the split happens while the source runs
                for child in self.split_when_drained[1]:
                    self.shards[child].visible = True
            if self.outage is not None and self.outage.lose_replies:
                error = self.outage.error_for(shard_id, self.served(self.outage.shard) - len(batch))
                if error is not None:
                    raise error  # the reply is lost: the client saw none of these records
            next_iterator = f"{shard_id}|{end}|{uuid.uuid4().hex}"
            if shard.closed and end == len(shard.records) and not batch:
                next_iterator = None  # a closed shard read to its end
                self.log.append(("end", shard_id))
            return {
                "Records": [
                    {"SequenceNumber": s, "Data": d, "ApproximateArrivalTimestamp": a, "PartitionKey": "k"}
                    for s, d, a in batch
                ],
                "NextShardIterator": next_iterator,
                "MillisBehindLatest": 0 if end == len(shard.records) else 1000,
            }


# Big sequence numbers that cross a power of ten: compared as strings they would go back.
BIG = 10**40 - 3


def fake_records(count, first_event_ms, first_sequence=BIG, step=1):
    records = []
    for i in range(count):
        event_ms = first_event_ms + i * 1000
        arrival = datetime.fromtimestamp((event_ms + 500) / 1000, UTC)
        records.append((str(first_sequence + i * step), line_at(i, event_ms, f"p{i % 5}"), arrival))
    return records


def run_fake(tmp_path, name, fake, **kwargs):
    _FAKES[name] = fake
    try:
        return run_source(
            tmp_path,
            stream_name=name,
            region=REGION,
            client_factory=_FakeFactory(name),
            **{"initial_position": "TRIM_HORIZON", "stop_when_idle_secs": 0.5, **kwargs},
        )
    finally:
        del _FAKES[name]


def expected_positions(fake):
    return {f"{shard.shard_id}:{s}" for shard in fake.shards.values() for s, _, _ in shard.records}


def assert_exactly_once(run, fake):
    got = positions(run.records)
    assert len(got) == len(set(got)), "a record was emitted twice"
    assert set(got) == expected_positions(fake)
    assert run.late == []


def test_throttled_get_records_are_retried_without_loss_or_duplicates(tmp_path):
    fake = FakeKinesis(
        [FakeShard("shardId-000000000000", fake_records(60, now_minute_ms()))], throttle_calls={2, 3, 4}
    )
    run = run_fake(tmp_path, "fake-throttle", fake, max_records=10)
    print(f"\nfake throttling: {run.seconds:.2f} s wall time")
    assert_exactly_once(run, fake)
    assert fake.throttled == 3
    assert run.counters["kinesis_throttled_calls"] == 3


def two_shards(count=60):
    return [
        FakeShard("shardId-000000000000", fake_records(count, now_minute_ms())),
        FakeShard("shardId-000000000001", fake_records(count, now_minute_ms(), first_sequence=BIG + 10**6)),
    ]


def test_an_outage_of_one_shard_is_ridden_out_without_loss_or_duplicates(tmp_path):
    """Shard 0 unreachable (refused, reset, timed out, 500, 503) for 1 s after 20 of its
    records, GetShardIterator included: it picks up right after its last claimed record;
    shard 1 reads on meanwhile."""
    outage = Outage(OUTAGE_ERRORS, shard="shardId-000000000000", after_served=20, secs=1.0)
    fake = FakeKinesis(two_shards(), outage=outage, expire={("shardId-000000000000", 30)})
    run = run_fake(tmp_path, "fake-outage", fake, max_records=10, max_backoff_secs=0.3)
    print(f"\nfake outage of one shard: {outage.failures} failed calls, {run.seconds:.2f} s wall time")
    assert_exactly_once(run, fake)
    assert outage.failures >= 3
    assert run.counters["kinesis_retries"] == outage.failures
    served = [e[2] for e in fake.log if e[0] == "served" and e[1] == "shardId-000000000000"]
    assert len(served) == len(set(served)), "a record was fetched again after it was claimed"


def test_a_reply_lost_after_the_service_served_it_is_read_again_exactly_once(tmp_path):
    """GetRecords carried out, its reply cut (the connection closed mid-response): the
    same records come again with the next call and are emitted once."""
    outage = Outage([connection_reset()], after_served=10, secs=0.8, lose_replies=True)
    fake = FakeKinesis(two_shards(40), outage=outage)
    run = run_fake(tmp_path, "fake-lost-reply", fake, max_records=10, max_backoff_secs=0.5)
    assert_exactly_once(run, fake)
    assert outage.failures >= 1
    assert run.counters["kinesis_retries"] == outage.failures
    served = [e[2] for e in fake.log if e[0] == "served"]
    assert len(served) > len(set(served)), "no record was served twice: no reply was lost"


def test_a_reply_cut_short_and_read_as_empty_is_not_taken_for_the_end_of_the_shard(tmp_path):
    """botocore reads a JSON reply cut in its headers as {}: no Records, no
    NextShardIterator, no ShardIterator, no Shards. Taken at face value, a shard would
    look ended (never read again) and a listing empty (nothing read at all)."""
    outage = Outage([EMPTY_REPLY], after_served=15, secs=1.0)
    fake = FakeKinesis(two_shards(40), outage=outage, expire={("shardId-000000000001", 20)})
    run = run_fake(tmp_path, "fake-empty-replies", fake, max_records=10, max_backoff_secs=0.3)
    assert_exactly_once(run, fake)
    assert outage.failures >= 2
    assert run.counters["kinesis_retries"] == outage.failures


def test_listing_the_shards_at_start_waits_out_an_outage(tmp_path):
    outage = Outage([unreachable(), EMPTY_REPLY, connection_reset()], secs=1.0)
    fake = FakeKinesis(two_shards(20), outage=outage)
    run = run_fake(tmp_path, "fake-listing-outage", fake, max_records=10, max_backoff_secs=0.5)
    assert_exactly_once(run, fake)
    assert outage.failures >= 1


def test_throttling_and_expired_iterators_in_bursts_lose_and_double_nothing(tmp_path):
    """ProvisionedThroughputExceeded on 8 calls in a row, then on 4 more, and an expired
    iterator on every 10th record of both shards."""
    shards = two_shards(30)
    expire = {(shard.shard_id, index) for shard in shards for index in range(10, 30, 10)}
    fake = FakeKinesis(shards, throttle_calls=set(range(3, 11)) | set(range(16, 20)), expire=expire)
    run = run_fake(tmp_path, "fake-bursts", fake, max_records=5, max_backoff_secs=0.2)
    print(f"\nfake bursts: {run.seconds:.2f} s wall time")
    assert_exactly_once(run, fake)
    assert fake.throttled == run.counters["kinesis_throttled_calls"] == 12
    assert run.counters["kinesis_expired_iterators"] == len(expire)


def test_an_outage_longer_than_the_bound_fails_loudly(tmp_path):
    outage = Outage([unreachable()], shard="shardId-000000000000", after_served=10)  # never ends
    fake = FakeKinesis(two_shards(40), outage=outage)
    with pytest.raises(Exception, match="still failing after") as failed:
        run_fake(tmp_path, "fake-long-outage", fake, max_records=10, retry_for_secs=1.0, max_backoff_secs=0.3)
    assert "shardId-000000000000" in str(failed.value)


def test_an_error_that_cannot_pass_fails_at_once(tmp_path):
    denied = client_error("AccessDeniedException", "GetRecords")
    outage = Outage([denied], shard="shardId-000000000000", after_served=10)
    fake = FakeKinesis(two_shards(40), outage=outage)
    with pytest.raises(Exception, match="AccessDeniedException"):
        run_fake(tmp_path, "fake-denied", fake, max_records=10)
    assert outage.failures == 1


def test_expired_iterator_resumes_right_after_the_last_claimed_record(tmp_path):
    first = fake_records(40, now_minute_ms())
    second = fake_records(15, now_minute_ms(), first_sequence=7_000, step=7)
    fake = FakeKinesis(
        [FakeShard("shardId-000000000000", first), FakeShard("shardId-000000000001", second)],
        # Shard 0 after 20 records were claimed; shard 1 before any was.
        expire={("shardId-000000000000", 20), ("shardId-000000000001", 0)},
    )
    run = run_fake(tmp_path, "fake-expired", fake, max_records=10)
    print(f"\nfake expired iterators: {run.seconds:.2f} s wall time")
    assert_exactly_once(run, fake)
    assert run.counters["kinesis_expired_iterators"] == 2
    iterators = [entry for entry in fake.log if entry[0] == "iterator"]
    assert ("iterator", "shardId-000000000000", "AFTER_SEQUENCE_NUMBER", first[19][0]) in iterators
    # Nothing claimed yet: the fresh iterator is the original position again.
    assert [e for e in iterators if e[1] == "shardId-000000000001"][:2] == [
        ("iterator", "shardId-000000000001", "TRIM_HORIZON", None)
    ] * 2
    served = [entry[2] for entry in fake.log if entry[0] == "served" and entry[1] == "shardId-000000000000"]
    assert served == [s for s, _, _ in first], "the fake served a gap or a duplicate"


@pytest.mark.parametrize("split_before_start", [False, True])
def test_resharding_reads_children_once_and_after_their_parent(tmp_path, split_before_start):
    start_ms = now_minute_ms()
    parent = FakeShard("shardId-000000000000", fake_records(30, start_ms), closed=split_before_start)
    children = [
        FakeShard(
            f"shardId-00000000000{n}",
            fake_records(12, start_ms + 30_000, first_sequence=BIG + 1000 * n),
            parent="shardId-000000000000",
            visible=split_before_start,
        )
        for n in (1, 2)
    ]
    fake = FakeKinesis(
        [parent, *children],
        split_when_drained=None
        if split_before_start
        else ("shardId-000000000000", [c.shard_id for c in children]),
    )
    run = run_fake(tmp_path, f"fake-reshard-{split_before_start}", fake, max_records=10)
    print(f"\nfake resharding (split before start: {split_before_start}): {run.seconds:.2f} s wall time")
    assert_exactly_once(run, fake)
    # Gating: the parent was read to its end before any child was even opened.
    parent_end = fake.log.index(("end", "shardId-000000000000"))
    first_child = min(i for i, entry in enumerate(fake.log) if entry[1] != "shardId-000000000000")
    assert parent_end < first_child
    children_read = [e for e in fake.log if e[0] == "iterator" and e[1] != "shardId-000000000000"]
    assert sorted(e[1] for e in children_read) == ["shardId-000000000001", "shardId-000000000002"]


def test_merged_shards_hand_their_child_to_one_reader_only(tmp_path):
    start_ms = now_minute_ms()
    first, second, merged = "shardId-000000000000", "shardId-000000000001", "shardId-000000000002"
    fake = FakeKinesis(
        [
            FakeShard(first, fake_records(20, start_ms), closed=True),
            FakeShard(second, fake_records(20, start_ms, first_sequence=BIG + 500), closed=True),
            FakeShard(
                merged,
                fake_records(10, start_ms + 20_000, first_sequence=BIG + 1000),
                parent=first,
                adjacent=second,
            ),
        ]
    )
    # Idle long enough that a reader still looking for the second parent's successor
    # (instead of retiring it) would list the shards again.
    run = run_fake(tmp_path, "fake-merge", fake, max_records=10, stop_when_idle_secs=2.5)
    print(f"\nfake merge: {run.seconds:.2f} s wall time")
    assert_exactly_once(run, fake)
    merged_opened = [i for i, entry in enumerate(fake.log) if entry[0] == "iterator" and entry[1] == merged]
    assert len(merged_opened) == 1
    assert fake.log.index(("end", first)) < merged_opened[0]
    assert fake.listings == 3  # at start, at the end of each parent; never polled again


# --- Unit tests of the rules ---------------------------------------------------------------


def test_parse_initial_position():
    assert parse_initial_position("LATEST") == ("LATEST", None)
    assert parse_initial_position("trim_horizon") == ("TRIM_HORIZON", None)
    moment = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)
    expected_ms = int(moment.timestamp() * 1000)
    assert parse_initial_position("AT_TIMESTAMP:2026-11-27T14:00:00Z") == ("AT_TIMESTAMP", expected_ms)
    assert parse_initial_position("AT_TIMESTAMP:2026-11-27T14:00:00") == ("AT_TIMESTAMP", expected_ms)
    assert parse_initial_position("AT_TIMESTAMP:2026-11-27T15:00:00.250+01:00") == (
        "AT_TIMESTAMP",
        expected_ms + 250,
    )
    for bad in ("", "EARLIEST", "AT_TIMESTAMP:", "AT_TIMESTAMP:yesterday", "AT_SEQUENCE_NUMBER:1"):
        with pytest.raises(ValueError, match="initial position"):
            parse_initial_position(bad)


def test_a_restart_reads_from_early_enough_for_its_players_but_never_before_the_first_start():
    c_ms = int(datetime(2026, 11, 27, 14, 0, tzinfo=UTC).timestamp() * 1000)
    rebuild_ms = 310_000  # timeout + out-of-orderness
    assert pinned("LATEST", c_ms) == "AT_TIMESTAMP:2026-11-27T14:00:00Z"
    assert pinned("TRIM_HORIZON", c_ms) == "TRIM_HORIZON"
    # No checkpoint yet: where the first run started.
    assert (
        restart_position("AT_TIMESTAMP:2026-11-27T13:00:00Z", None, rebuild_ms)
        == "AT_TIMESTAMP:2026-11-27T13:00:00Z"
    )
    assert restart_position("TRIM_HORIZON", None, rebuild_ms) == "TRIM_HORIZON"
    # After checkpoint C: C - timeout - out-of-orderness, unless the first start is later.
    assert restart_position("TRIM_HORIZON", c_ms, rebuild_ms) == "AT_TIMESTAMP:2026-11-27T13:54:50Z"
    assert (
        restart_position("AT_TIMESTAMP:2026-11-27T13:00:00Z", c_ms, rebuild_ms)
        == "AT_TIMESTAMP:2026-11-27T13:54:50Z"
    )
    assert (
        restart_position("AT_TIMESTAMP:2026-11-27T13:58:00Z", c_ms, rebuild_ms)
        == "AT_TIMESTAMP:2026-11-27T13:58:00Z"
    )


def test_transform_rejects_a_bad_initial_position():
    with pytest.raises(ValueError, match="AT_TIMESTAMP"):
        ReadKinesisRecords("s", REGION, initial_position="NOW")


def test_tracker_claims_checkpoints_and_resumes_after_the_last_claim():
    shard = "shardId-000000000000"
    tracker = KinesisShardsTracker(KinesisRestriction((ShardCursor(shard, "TRIM_HORIZON"),)))
    nines, power = str(10**40 - 1), str(10**40)  # "1000..." < "999..." as strings
    assert tracker.try_claim(RecordClaim(shard, nines, 5_000))
    assert tracker.try_claim(RecordClaim(shard, power, 4_000))
    with pytest.raises(ValueError, match="not after"):
        tracker.try_claim(RecordClaim(shard, nines, 6_000))
    with pytest.raises(ValueError):
        tracker.check_done()  # work remains: the reader must checkpoint or stop
    assert tracker.try_split(0.5) is None  # checkpoints only

    primary, residual = tracker.try_split(0)
    assert primary.finished and not residual.finished
    assert residual.cursors == (ShardCursor(shard, f"AFTER_SEQUENCE_NUMBER:{power}", 5_000, None),)
    assert tracker.current_restriction() == primary
    tracker.check_done()
    assert not tracker.try_claim(RecordClaim(shard, str(10**40 + 1)))  # nothing after the split
    assert tracker.try_split(0) is None

    resumed = KinesisShardsTracker(residual)
    request = shard_iterator_request("s", shard, residual.cursors[0].position)
    assert request["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"
    assert request["StartingSequenceNumber"] == power
    with pytest.raises(ValueError):
        resumed.try_claim(RecordClaim(shard, power))  # a resume never re-reads the last claim
    assert resumed.try_claim(RecordClaim(shard, str(10**40 + 1)))


def test_tracker_hands_a_closed_shard_to_its_children_and_stops():
    parent, child = "shardId-000000000000", "shardId-000000000001"
    tracker = KinesisShardsTracker(KinesisRestriction((ShardCursor(parent, "AFTER_SEQUENCE_NUMBER:7"),)))
    assert tracker.try_claim(ShardEndClaim(parent, (ShardCursor(child, "TRIM_HORIZON"),)))
    assert tracker.current_restriction().cursors == (ShardCursor(child, "TRIM_HORIZON"),)
    with pytest.raises(ValueError):
        tracker.try_claim(RecordClaim(parent, "8"))  # the parent is no longer read here
    assert tracker.try_claim(StopClaim())
    tracker.check_done()
    assert tracker.try_split(0) is None


def test_an_unreachable_shard_is_not_quiet_so_the_watermark_stays_where_it_is():
    """A caught-up, silent shard follows the wall clock; once a call on it fails it holds
    the watermark at its latest event time again (records written during the outage are
    not made late) and stops counting towards the stop rule."""
    shard = "shardId-000000000000"
    quiet = ShardCursor(shard, "AFTER_SEQUENCE_NUMBER:7", max_event_ms=50_000, quiet_since_ms=100_000)
    tracker = KinesisShardsTracker(KinesisRestriction((quiet,)))
    now_ms = 200_000
    assert restriction_watermark_ms(tracker.current_restriction(), now_ms, 10_000, 30_000) == 190_000
    assert tracker.try_claim(UnreachableClaim(shard))
    held = tracker.current_restriction()
    assert held.cursors == (quiet._replace(quiet_since_ms=None),)  # the position did not move
    assert restriction_watermark_ms(held, now_ms + 60_000, 10_000, 30_000) == 40_000


def test_root_shards_leave_children_to_their_parent():
    shards = [
        {"ShardId": "a", "ParentShardId": "trimmed-long-ago"},
        {"ShardId": "b"},
        {"ShardId": "c", "ParentShardId": "a"},
        {"ShardId": "d", "ParentShardId": "b", "AdjacentParentShardId": "a"},
    ]
    assert root_shard_ids(shards) == ["a", "b"]
    assert child_shard_ids(shards, "a") == ["c"]
    assert child_shard_ids(shards, "b") == ["d"]
    assert has_successor(shards, "a") and has_successor(shards, "b")
    assert not has_successor(shards, "c")


def test_place_record_and_watermark_rules():
    assert place_record(1_000, 9_000, None) == (1_000, False)
    assert place_record(1_000, 9_000, 2_000) == (1_000, True)
    assert place_record(2_000, 9_000, 2_000) == (2_000, False)  # at the watermark is on time
    assert place_record(None, 9_000, 2_000) == (9_000, False)  # garbage: arrival time
    assert place_record(None, 1_000, 2_000) == (2_000, False)  # never behind the watermark

    # The bound: the watermark already reported, or the out-of-orderness behind the latest
    # event time read before in the shard, whichever is later; whatever the batches were.
    assert lateness_bound_ms(None, None, 10_000) is None
    assert lateness_bound_ms(5_000, None, 10_000) == 5_000
    assert lateness_bound_ms(None, 30_000, 10_000) == 20_000
    assert lateness_bound_ms(5_000, 30_000, 10_000) == 20_000
    assert lateness_bound_ms(25_000, 30_000, 10_000) == 25_000  # an idle shard's clock went further

    busy = ShardCursor("a", "AFTER_SEQUENCE_NUMBER:1", max_event_ms=50_000)
    unknown = ShardCursor("b", "TRIM_HORIZON")
    idle = ShardCursor("b", "TRIM_HORIZON", quiet_since_ms=100_000)
    now_ms = 200_000
    assert restriction_watermark_ms(KinesisRestriction((busy,)), now_ms, 10_000, 30_000) == 40_000
    assert restriction_watermark_ms(KinesisRestriction((busy, unknown)), now_ms, 10_000, 30_000) is None
    # An idle shard follows the wall clock, so only the busy one holds the watermark.
    assert restriction_watermark_ms(KinesisRestriction((busy, idle)), now_ms, 10_000, 30_000) == 40_000
    assert restriction_watermark_ms(KinesisRestriction((idle,)), now_ms, 10_000, 30_000) == 190_000
    assert restriction_watermark_ms(KinesisRestriction((idle,)), now_ms, 10_000, 150_000) is None


def test_the_transform_pickles_with_its_default_client_factory():
    import pickle

    transform = ReadKinesisRecords("s", REGION, endpoint_url="http://127.0.0.1:1")
    restored = pickle.loads(pickle.dumps(transform._client_factory))
    assert (restored.service, restored.region, restored.endpoint_url) == (
        "kinesis",
        REGION,
        "http://127.0.0.1:1",
    )
