"""ReadKinesisRecords: the streaming source, a splittable DoFn over boto3 (no Java).

Design
------
* `ListRootShards` (after an Impulse) calls ListShards once and emits one element per
  *root* shard: a shard whose parent is not in the listing. A "LATEST" start is pinned
  here to AT_TIMESTAMP of the wall clock, so a restore before the first record neither
  skips records that arrived meanwhile nor re-reads older ones.
* `_ReadShardsFn` is a splittable DoFn. Its restriction (`KinesisRestriction`) starts as
  one shard and holds a cursor per shard it reads: the shard id, where to resume
  (TRIM_HORIZON, AT_TIMESTAMP:<ms> or AFTER_SEQUENCE_NUMBER:<seq> of the last claimed
  record), the latest event time claimed (for the watermark) and since when the shard
  has been caught up and silent.
* Resharding: when a closed shard's GetRecords returns no NextShardIterator, the reader
  calls ListShards and *adopts* the children whose ParentShardId is that shard, in the
  same claim that retires the parent. Every shard has exactly one ParentShardId, read by
  exactly one restriction, so every child is adopted exactly once (never lost, never read
  twice), and a child of a split is read only after its parent was read to its end. A
  merged child is gated on its ParentShardId only, not on its AdjacentParentShardId,
  whose reader just retires that shard.
  The price: a lineage keeps the parallelism of the roots (no watcher SDF is needed, so
  nothing else has to learn when to stop).
* Each process() call polls every shard of the restriction once (at most one GetRecords
  per shard per poll_interval_secs >= 0.2 s, i.e. the service's 5 calls/s), claims each
  record before emitting it, advances the ManualWatermarkEstimator, then checkpoints with
  `tracker.defer_remainder()`: a runner resumes the residual at once, and the pacing
  above keeps the calls within the service's limits.

Why a retry or a restore never duplicates or skips
---------------------------------------------------
The restriction is the only thing a runner keeps. Records are emitted only after
`try_claim(RecordClaim)` moved the shard's cursor to AFTER_SEQUENCE_NUMBER of that record,
and a checkpoint (try_split(0)) hands the residual exactly those cursors: the primary is
"everything claimed so far", the residual starts right after the last claimed record. A
failed bundle is retried from the previous residual with its outputs discarded, so it
re-reads exactly what it had not committed. The DoFn caches shard iterators only under
the cursor they continue from, and after ExpiredIteratorException asks for a fresh one
from the cursor (or the original position when nothing was claimed yet). Sequence numbers
are compared as integers; a record at or before the cursor is dropped, never re-emitted.

Watermark and lateness
----------------------
Per restriction: min over its shards of (latest event time claimed - max out-of-
orderness), never moving back. A shard caught up (empty GetRecords, MillisBehindLatest 0)
and silent for idle_shard_secs follows the wall clock instead (now - out-of-orderness),
so idle players still time out downstream. A record is late when its event time is behind the
watermark this restriction already reported, or more than the out-of-orderness behind
a record read before it in its shard (the same rule whatever the GetRecords batch
boundaries were). A late record goes to LATE as a DeadLetter, so nothing downstream is
ever late: lateness is judged where the watermark is made. A record without
a usable event time (not UTF-8, wrong field count, too large, a timestamp that cannot be
read or cannot be true: see `pipeline.rules.observations.usable_event_time_ms`) is
timestamped at its ApproximateArrivalTimestamp (raised to the watermark if behind it);
the parser dead-letters it with the true reason. The rule is the parser's own, given the
same arrival time, so the two never disagree: one record dated year 9999 cannot move its
shard's watermark (and make every later record late), and one dated 1970 cannot open
fifty years of windows.

AWS away or refusing
--------------------
A failed call on a shard (GetShardIterator, GetRecords, or ListShards when it ends) that
may pass (throttling, a 5xx answer, no answer, or an answer cut short that botocore took
for an empty one: `pipeline.aws.is_transient`, `IncompleteReply`) is retried on
that shard alone, with exponential backoff and jitter, while the other shards go on.
Nothing moves meanwhile: the cursor stays at the last claimed record (so the retry reads
exactly what was not claimed: never a gap, never a record twice) and the shard stops
counting as quiet (an outage is not silence: the idle rule would otherwise move the
watermark with the wall clock past records written during the outage, and the stop rule
would end the stream). So the watermark stays where it is. A shard that has not had one
successful call for `pipeline.aws.RETRY_FOR_SECS` fails the bundle loudly
(AwsCallFailed); a restart with the same flags resumes from the committed checkpoint.
Throttling counts in `kinesis_throttled_calls`, other transient failures in
`kinesis_retries`. Any other error (access denied, a missing stream) fails at once.

Stopping
--------
The reader runs until the pipeline is cancelled (`process` is declared
`unbounded_per_element`: its output is an unbounded PCollection). With
`stop_when_idle_secs` (tests, replays of a stream that has stopped) it finishes once
every shard is caught up and silent that long; the watermark then goes to +infinity,
so every player times out and everything is final.

Not handled: KPL-aggregated records are emitted as they are (not de-aggregated).
"""

import logging
import time
from datetime import UTC, datetime
from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue

from pipeline.aws import (
    RETRY_FOR_SECS,
    ClientFactory,
    RetrySchedule,
    call_with_retries,
    error_code,
    is_transient,
    require,
)
from pipeline.rules.observations import (
    DEFAULT_EVENT_TIME_FIELD,
    LATE,
    EnrichedRecord,
    dead_letter,
    line_event_time_ms,
)
from pipeline.rules.positions import (
    AT_TIMESTAMP,
    LATEST,
    TRIM_HORIZON,
    InitialPosition,
    parse_initial_position,
    pin,
)
from pipeline.rules.times import epoch_ms
from pipeline.runtime import metrics
from pipeline.runtime.timestamps import ms_to_timestamp

_LOG = logging.getLogger(__name__)

AFTER_SEQUENCE_NUMBER = "AFTER_SEQUENCE_NUMBER"

MIN_POLL_INTERVAL_SECS = 0.2  # Kinesis allows 5 GetRecords calls per second per shard
MAX_RECORDS_LIMIT = 10000  # GetRecords' own maximum
MAX_BACKOFF_SECS = 5.0
CHILD_LISTING_INTERVAL_SECS = 1.0  # how often to look for the children of an ended shard

THROTTLED = ("ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException")
EXPIRED_ITERATOR = "ExpiredIteratorException"
NOT_FOUND = "ResourceNotFoundException"


# --- Positions -------------------------------------------------------------------------


def start_position(initial: InitialPosition, now_ms: int) -> str:
    """The cursor position a shard starts from. LATEST is pinned to the wall clock:
    a bare LATEST iterator cannot be resumed after a restore without skipping."""
    initial = pin(initial, now_ms)
    if initial.kind == TRIM_HORIZON:
        return TRIM_HORIZON
    return f"{AT_TIMESTAMP}:{initial.timestamp_ms}"


def after(sequence_number: str) -> str:
    return f"{AFTER_SEQUENCE_NUMBER}:{sequence_number}"


def claimed_sequence(position: str) -> int | None:
    """The sequence number a position resumes after, as an int (None if nothing claimed)."""
    if position.startswith(AFTER_SEQUENCE_NUMBER + ":"):
        return int(position.split(":", 1)[1])
    return None


def shard_iterator_request(stream_name: str, shard_id: str, position: str) -> dict:
    """GetShardIterator arguments that resume at `position`."""
    request = {"StreamName": stream_name, "ShardId": shard_id}
    kind, _, value = position.partition(":")
    if kind == AFTER_SEQUENCE_NUMBER:
        request.update(ShardIteratorType=AFTER_SEQUENCE_NUMBER, StartingSequenceNumber=value)
    elif kind == AT_TIMESTAMP:
        request.update(
            ShardIteratorType=AT_TIMESTAMP, Timestamp=datetime.fromtimestamp(int(value) / 1000, UTC)
        )
    elif kind in (TRIM_HORIZON, LATEST):
        request.update(ShardIteratorType=kind)
    else:
        raise ValueError(f"unknown shard position {position!r}")
    return request


# --- Restriction and tracker -----------------------------------------------------------


# The status's watermark gauge of a restriction that has finished (no longer holding
# the watermark back): the status takes the earliest of the others.
FINISHED_WATERMARK_MS = 2**62


class RootShard(NamedTuple):
    """The element the reader gets: one root shard and the position the stream starts at
    (which its adopted descendants also start from)."""

    shard_id: str
    start: str


class ShardCursor(NamedTuple):
    shard_id: str
    position: str  # TRIM_HORIZON, AT_TIMESTAMP:<ms> or AFTER_SEQUENCE_NUMBER:<seq>
    max_event_ms: int | None = None  # latest event time claimed in this shard
    quiet_since_ms: int | None = None  # wall clock since when caught up and silent


class KinesisRestriction(NamedTuple):
    """The shards one reader is responsible for (one at first, its descendants after a
    reshard). `finished` is set on a checkpoint's primary and when the reader stops."""

    cursors: tuple
    finished: bool = False


class RecordClaim(NamedTuple):
    shard_id: str
    sequence_number: str
    event_time_ms: int | None = None


class CaughtUpClaim(NamedTuple):
    """An empty GetRecords at the tip of the shard (or an ended shard awaiting children)."""

    shard_id: str
    now_ms: int


class ShardEndClaim(NamedTuple):
    """A closed shard read to its end, replaced by the children it hands over."""

    shard_id: str
    children: tuple  # ShardCursor of each adopted child


class UnreachableClaim(NamedTuple):
    """A call on the shard failed: nothing is known of it until one succeeds, so it stops
    counting as quiet (an outage is not silence)."""

    shard_id: str


class StopClaim(NamedTuple):
    """The reader stops (stop_when_idle_secs, or no shard left): the rest is done."""


class KinesisShardsTracker(RestrictionTracker):
    """Tracks the cursors of a KinesisRestriction. Claims only move cursors forward;
    try_split is checkpoint-only (primary = what was claimed, residual = from right
    after it)."""

    def __init__(self, restriction: KinesisRestriction):
        self._restriction = restriction
        self._claims = 0

    def current_restriction(self):
        return self._restriction

    def current_progress(self):
        """Claims made, and 1 for "more to come" (a stream's remainder has no size). Never
        0 of 0: a runner divides by the total."""
        if self._restriction.finished:
            return RestrictionProgress(completed=max(1, self._claims), remaining=0)
        return RestrictionProgress(completed=self._claims, remaining=1)

    def is_bounded(self):
        return self._restriction.finished

    def check_done(self):
        if not self._restriction.finished:
            raise ValueError(
                f"Kinesis restriction not finished: shards {[c.shard_id for c in self._restriction.cursors]} "
                "are still to be read; the reader must checkpoint (defer_remainder) or claim StopClaim"
            )

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder != 0 or self._restriction.finished:
            return None  # only checkpoints: a shard's records cannot be split by position
        residual = self._restriction
        self._restriction = residual._replace(finished=True)
        return self._restriction, residual

    def try_claim(self, claim):
        if self._restriction.finished:
            return False
        if isinstance(claim, StopClaim):
            self._restriction = self._restriction._replace(finished=True)
            return True
        cursors = list(self._restriction.cursors)
        index = next((i for i, c in enumerate(cursors) if c.shard_id == claim.shard_id), None)
        if index is None:
            raise ValueError(f"claim {claim} for a shard this restriction does not read")
        cursor = cursors[index]
        if isinstance(claim, RecordClaim):
            last = claimed_sequence(cursor.position)
            if last is not None and int(claim.sequence_number) <= last:
                raise ValueError(f"claim {claim} is not after {cursor.position}")
            max_event = cursor.max_event_ms
            if claim.event_time_ms is not None:
                max_event = claim.event_time_ms if max_event is None else max(max_event, claim.event_time_ms)
            cursors[index] = cursor._replace(
                position=after(claim.sequence_number), max_event_ms=max_event, quiet_since_ms=None
            )
        elif isinstance(claim, CaughtUpClaim):
            cursors[index] = cursor._replace(
                quiet_since_ms=claim.now_ms if cursor.quiet_since_ms is None else cursor.quiet_since_ms
            )
        elif isinstance(claim, UnreachableClaim):
            cursors[index] = cursor._replace(quiet_since_ms=None)
        elif isinstance(claim, ShardEndClaim):
            known = {c.shard_id for c in cursors}
            cursors[index : index + 1] = [c for c in claim.children if c.shard_id not in known]
        else:
            raise ValueError(f"unknown claim {claim!r}")
        self._claims += 1
        self._restriction = self._restriction._replace(cursors=tuple(cursors))
        return True


class _KinesisRestrictionProvider(RestrictionProvider):
    def initial_restriction(self, element: RootShard):
        return KinesisRestriction((ShardCursor(element.shard_id, element.start),))

    def create_tracker(self, restriction):
        return KinesisShardsTracker(restriction)

    def restriction_size(self, element, restriction):
        return 1


# --- Rules -----------------------------------------------------------------------------


def lateness_bound_ms(reported_ms, shard_max_ms, out_of_orderness_ms: int):
    """The earliest event time a record may have and still count: the watermark this
    restriction already reported, or the out-of-orderness behind the latest event time
    read before it in its shard, whichever is later (None: no bound yet). The second
    makes the rule the same whatever the GetRecords batches were."""
    shard_bound = None if shard_max_ms is None else shard_max_ms - out_of_orderness_ms
    bounds = [b for b in (reported_ms, shard_bound) if b is not None]
    return max(bounds) if bounds else None


def place_record(event_ms, arrival_ms: int, bound_ms) -> tuple:
    """(timestamp ms, is late) of a record, given its lateness bound.

    Without an event time: arrival time, raised to the bound so it is never late
    (the parser dead-letters the line with its true reason)."""
    if event_ms is None:
        return (arrival_ms if bound_ms is None else max(arrival_ms, bound_ms)), False
    return event_ms, bound_ms is not None and event_ms < bound_ms


def shard_watermark_ms(cursor: ShardCursor, now_ms: int, out_of_orderness_ms: int, idle_ms: int):
    """What one shard allows the watermark to be; None holds it (nothing known yet)."""
    mark = None if cursor.max_event_ms is None else cursor.max_event_ms - out_of_orderness_ms
    if cursor.quiet_since_ms is not None and now_ms - cursor.quiet_since_ms >= idle_ms:
        wall = now_ms - out_of_orderness_ms  # an idle shard must not hold timeouts back
        mark = wall if mark is None else max(mark, wall)
    return mark


def restriction_watermark_ms(restriction, now_ms, out_of_orderness_ms, idle_ms):
    marks = [shard_watermark_ms(c, now_ms, out_of_orderness_ms, idle_ms) for c in restriction.cursors]
    if not marks or any(mark is None for mark in marks):
        return None
    return min(marks)


def all_idle(restriction, now_ms, idle_ms) -> bool:
    return all(
        c.quiet_since_ms is not None and now_ms - c.quiet_since_ms >= idle_ms for c in restriction.cursors
    )


def list_shards(client, stream_name: str) -> list:
    shards, request = [], {"StreamName": stream_name}
    while True:
        response = require(client.list_shards(**request), "Shards", what="ListShards")
        shards.extend(response["Shards"])
        token = response.get("NextToken")
        if not token:
            return shards
        request = {"NextToken": token}  # ListShards refuses StreamName beside NextToken


def root_shard_ids(shards: list) -> list:
    """Shards whose parent is not listed (trimmed or never existed); the others are
    adopted by their parent's reader when it ends."""
    listed = {shard["ShardId"] for shard in shards}
    return sorted(s["ShardId"] for s in shards if s.get("ParentShardId") not in listed)


def child_shard_ids(shards: list, parent_id: str) -> list:
    """The children a closed shard's reader adopts: those whose ParentShardId it is."""
    return sorted(s["ShardId"] for s in shards if s.get("ParentShardId") == parent_id)


def has_successor(shards: list, shard_id: str) -> bool:
    """Whether a shard was split or merged (it is a parent or an adjacent parent)."""
    return any(shard_id in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) for s in shards)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- DoFns -----------------------------------------------------------------------------


class _ListRootShardsFn(beam.DoFn):
    def __init__(self, stream_name, initial_position: InitialPosition, client_factory):
        self._stream_name = stream_name
        self._initial = initial_position
        self._client_factory = client_factory

    def setup(self):
        self._client = self._client_factory()

    def process(self, _):
        start = start_position(self._initial, _now_ms())  # pinned before listing
        # Nothing else to do before the listing: waiting out an outage here is right.
        shards, _ = call_with_retries(
            lambda: list_shards(self._client, self._stream_name),
            f"ListShards of stream {self._stream_name!r}",
        )
        for shard_id in root_shard_ids(shards):
            yield RootShard(shard_id, start)


class _ReadShardsFn(beam.DoFn):
    """Thin loop around GetRecords; positions, watermark and stop rules are above."""

    def __init__(self, stream_name, client_factory, settings: dict):
        self._stream_name = stream_name
        self._client_factory = client_factory
        self._s = settings
        self._records = metrics.counter("kinesis_records_read")
        self._calls = metrics.counter("kinesis_get_records_calls")
        self._throttled = metrics.counter("kinesis_throttled_calls")
        self._retries = metrics.counter("kinesis_retries")
        self._expired = metrics.counter("kinesis_expired_iterators")
        self._late = metrics.counter("kinesis_late_records")
        self._per_shard = {}
        self._gauges = {}

    def setup(self):
        self._client = self._client_factory()
        # Worker-local caches, all safe to lose: an iterator is kept only under the
        # cursor position it continues from.
        self._iterators = {}  # shard_id -> (position, iterator)
        self._next_call = {}  # shard_id -> monotonic time of the next allowed call
        self._failures = RetrySchedule(
            self._s["poll_interval_secs"], self._s["max_backoff_secs"], self._s["retry_for_secs"]
        )  # per shard: failed calls in a row, since when
        self._ended = {}  # shard_id -> monotonic time to look for its children again

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        root: RootShard,
        tracker=beam.DoFn.RestrictionParam(_KinesisRestrictionProvider()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        """One poll of every shard of the restriction, then a checkpoint (or the end)."""
        reported = watermark.current_watermark()
        reported_ms = None if reported is None else reported.micros // 1000
        refused = False
        for cursor in tracker.current_restriction().cursors:
            refused = not (yield from self._poll_shard(root, cursor, tracker, reported_ms))
            if refused:
                break  # the runner checkpointed under us: the residual is already set
        if not refused:
            self._settle(root, tracker, watermark)

    def _settle(self, root, tracker, watermark):
        """Report the watermark; then finish (stop rule, or no shard left) or checkpoint."""
        restriction = tracker.current_restriction()
        now_ms = _now_ms()
        mark = restriction_watermark_ms(
            restriction, now_ms, self._s["out_of_orderness_ms"], self._s["idle_shard_ms"]
        )
        current = watermark.current_watermark()
        if mark is not None and (current is None or ms_to_timestamp(mark) > current):
            watermark.set_watermark(ms_to_timestamp(mark))
        held = watermark.current_watermark()
        if mark is not None and held is not None:  # for the status: the watermark's lag behind now
            self._gauge(root.shard_id, "watermark_ms").set(held.micros // 1000)
        stop_ms = self._s["stop_when_idle_ms"]
        if not restriction.cursors or (stop_ms is not None and all_idle(restriction, now_ms, stop_ms)):
            tracker.try_claim(StopClaim())  # finished: this restriction's watermark goes to +inf
            self._gauge(root.shard_id, "watermark_ms").set(FINISHED_WATERMARK_MS)
        else:
            tracker.defer_remainder()

    def _poll_shard(self, root, cursor, tracker, reported_ms):
        """Generator: one GetRecords on one shard; returns False if a claim was refused."""
        shard_id = cursor.shard_id
        if shard_id in self._ended:
            return self._adopt_children(root, shard_id, tracker)
        for _attempt in range(2):  # a second time only after an expired iterator
            self._pace(shard_id)
            call = "GetShardIterator"
            try:
                iterator = self._iterator(cursor)
                if iterator is None:
                    return self._adopt_children(root, shard_id, tracker)
                call = "GetRecords"
                response = self._client.get_records(ShardIterator=iterator, Limit=self._s["max_records"])
                require(response, "Records", what=f"GetRecords on shard {shard_id}")
                self._calls.inc()
            except Exception as error:  # botocore ClientError, matched by code
                code = error_code(error)
                if code == EXPIRED_ITERATOR:
                    self._expired.inc()
                    self._iterators.pop(shard_id, None)
                    continue
                if code == NOT_FOUND:  # the shard was trimmed away: it has ended
                    return self._adopt_children(root, shard_id, tracker)
                if not is_transient(error):
                    raise
                return self._failed(shard_id, error, call, cursor, tracker)
            self._failures.succeeded(shard_id)
            break
        else:
            return True  # expired twice in a row: try again next round
        position = cursor.position
        last = claimed_sequence(position)
        shard_max_ms = cursor.max_event_ms
        records = response.get("Records", [])
        for record in records:
            sequence = record["SequenceNumber"]
            if last is not None and int(sequence) <= last:
                continue  # already claimed: never emit twice
            data = record["Data"]
            arrival_ms = epoch_ms(record["ApproximateArrivalTimestamp"])
            event_ms = line_event_time_ms(data, self._s["event_time_field"], arrival_ms)
            if not tracker.try_claim(RecordClaim(shard_id, sequence, event_ms)):
                return False
            position, last = after(sequence), int(sequence)
            bound_ms = lateness_bound_ms(reported_ms, shard_max_ms, self._s["out_of_orderness_ms"])
            if event_ms is not None:
                shard_max_ms = event_ms if shard_max_ms is None else max(shard_max_ms, event_ms)
            self._count(shard_id, arrival_ms)
            yield self._output(f"{shard_id}:{sequence}", data, event_ms, arrival_ms, bound_ms)
        self._gauge(shard_id, "behind_ms").set(int(response.get("MillisBehindLatest", 0)))
        next_iterator = response.get("NextShardIterator")
        if next_iterator is None:
            self._iterators.pop(shard_id, None)
            return self._adopt_children(root, shard_id, tracker)
        self._iterators[shard_id] = (position, next_iterator)
        if not records and response.get("MillisBehindLatest", 0) == 0:
            return tracker.try_claim(CaughtUpClaim(shard_id, _now_ms()))
        return True

    def _output(self, position, data, event_ms, arrival_ms, bound_ms):
        time_ms, late = place_record(event_ms, arrival_ms, bound_ms)
        if late:
            self._late.inc()
            detail = (
                f"event time {event_ms} ms is behind {bound_ms} ms, the source's watermark or the "
                "out-of-orderness bound behind an earlier record of its shard"
            )
            letter = dead_letter(LATE, detail, position, data, event_ms)
            # Dated at the instant it missed, so its dead-letter window is still open.
            return pvalue.TaggedOutput(
                ReadKinesisRecords.LATE, TimestampedValue(letter, ms_to_timestamp(bound_ms))
            )
        return TimestampedValue(EnrichedRecord(position, data, arrival_ms), ms_to_timestamp(time_ms))

    def _adopt_children(self, root, shard_id, tracker):
        """Hands a closed shard over to its children; False if the claim was refused."""
        now = time.monotonic()
        if now < self._ended.get(shard_id, 0):
            if self._failures.is_failing(shard_id):
                return True  # still waiting to list again: not quiet, nothing to claim
            return tracker.try_claim(CaughtUpClaim(shard_id, _now_ms()))
        try:
            shards = list_shards(self._client, self._stream_name)
        except Exception as error:
            if not is_transient(error):
                raise
            cursor = next(c for c in tracker.current_restriction().cursors if c.shard_id == shard_id)
            refused = not self._failed(shard_id, error, "ListShards", cursor, tracker)
            self._ended[shard_id] = self._next_call[shard_id]
            return not refused
        self._failures.succeeded(shard_id)
        children = child_shard_ids(shards, shard_id)
        if not has_successor(shards, shard_id):
            # Not listed yet (or the stream is going away): look again later; the shard
            # counts as caught up so it neither holds the watermark forever nor the stop.
            self._ended[shard_id] = now + CHILD_LISTING_INTERVAL_SECS
            return tracker.try_claim(CaughtUpClaim(shard_id, _now_ms()))
        self._ended.pop(shard_id, None)
        # No child to adopt: merged into a shard the reader of its ParentShardId adopts.
        _LOG.info("Kinesis shard %s ended; adopting its children %s", shard_id, children)
        claim = ShardEndClaim(shard_id, tuple(ShardCursor(child, root.start) for child in children))
        return tracker.try_claim(claim)

    def _iterator(self, cursor):
        cached = self._iterators.get(cursor.shard_id)
        if cached is not None and cached[0] == cursor.position:
            return cached[1]
        request = shard_iterator_request(self._stream_name, cursor.shard_id, cursor.position)
        response = self._client.get_shard_iterator(**request)
        return require(response, "ShardIterator", what=f"GetShardIterator on shard {cursor.shard_id}")[
            "ShardIterator"
        ]

    def _pace(self, shard_id):
        wait = self._next_call.get(shard_id, 0) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._next_call[shard_id] = time.monotonic() + self._s["poll_interval_secs"]

    def _failed(self, shard_id, error, call, cursor, tracker) -> bool:
        """A call on the shard failed and may pass: count it, back off (exponential, with
        full jitter, on top of the poll interval; AwsCallFailed once the shard has failed
        for longer than the bound), and stop counting the shard as quiet. The cursor does
        not move. False if the claim was refused (the runner checkpointed under us)."""
        (self._throttled if error_code(error) in THROTTLED else self._retries).inc()
        delay = self._failures.failed(
            shard_id, error, f"Kinesis {call} on shard {shard_id} of stream {self._stream_name!r}"
        )
        self._next_call[shard_id] = time.monotonic() + self._s["poll_interval_secs"] + delay
        if cursor.quiet_since_ms is None:
            return True
        return tracker.try_claim(UnreachableClaim(shard_id))

    def _count(self, shard_id, arrival_ms):
        self._records.inc()
        if shard_id not in self._per_shard:
            self._per_shard[shard_id] = metrics.counter(f"kinesis_records_read_{shard_id}")
        self._per_shard[shard_id].inc()
        self._gauge(shard_id, "latest_arrival_ms").set(arrival_ms)

    def _gauge(self, shard_id, name):
        """Per shard, so the status can take the max (or min) over shards (a gauge keeps the
        last value set)."""
        key = (shard_id, name)
        if key not in self._gauges:
            self._gauges[key] = metrics.gauge(f"kinesis_{name}_{shard_id}")
        return self._gauges[key]


class ReadKinesisRecords(beam.PTransform):
    """Every shard of a Kinesis stream -> EnrichedRecord timestamped at its event time
    (RECORDS), and LATE: DeadLetter for records behind the source's own watermark.
    See the module docstring for the design."""

    RECORDS = "records"
    LATE = "late"

    def __init__(
        self,
        stream_name,
        region,
        endpoint_url=None,
        initial_position="LATEST",
        max_out_of_orderness_secs=10,
        idle_shard_secs=30,
        max_records=MAX_RECORDS_LIMIT,
        stop_when_idle_secs=None,
        event_time_field=DEFAULT_EVENT_TIME_FIELD,
        poll_interval_secs=0.2,
        client_factory=None,
        retry_for_secs=RETRY_FOR_SECS,
        max_backoff_secs=MAX_BACKOFF_SECS,
    ):
        super().__init__()
        self._stream_name = stream_name
        self._initial = parse_initial_position(initial_position)
        # The factory pickles; the client itself is made in setup().
        self._client_factory = client_factory or ClientFactory("kinesis", region, endpoint_url)
        self._settings = {
            "out_of_orderness_ms": int(max_out_of_orderness_secs * 1000),
            "idle_shard_ms": int(idle_shard_secs * 1000),
            "max_records": max(1, min(MAX_RECORDS_LIMIT, int(max_records))),
            "stop_when_idle_ms": None if stop_when_idle_secs is None else int(stop_when_idle_secs * 1000),
            "event_time_field": event_time_field,
            "poll_interval_secs": max(MIN_POLL_INTERVAL_SECS, float(poll_interval_secs)),
            "retry_for_secs": float(retry_for_secs),
            "max_backoff_secs": float(max_backoff_secs),
        }

    def expand(self, pbegin):
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "ListRootShards"
            >> beam.ParDo(_ListRootShardsFn(self._stream_name, self._initial, self._client_factory))
            | "ReadShards"
            >> beam.ParDo(
                _ReadShardsFn(self._stream_name, self._client_factory, self._settings)
            ).with_outputs(self.LATE, main=self.RECORDS)
        )
