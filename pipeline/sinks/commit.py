"""CommitCheckpoints: the ledger's checkpoint to the progress table, last of all.

A restarted pipeline resumes from the stored checkpoint C: it never rewrites a value,
a snapshot or a dead-letter window up to C. So checkpoint C may be stored only once
every output up to C is: the DynamoDB values of every update instant <= C, the
snapshot objects of every window ending <= C, and the dead-letter objects of those
windows. Those writers run in parallel, in their own steps; what orders them is the
watermark. Each writer emits something for each output it wrote, timestamped at its
instant (a window's dead letters at the window's last microsecond), and the commit
step reads all of them: its input watermark passes C only once every writer has
finished everything timestamped at or before C. Its timer, set at C + 1 ms (timers
carry milliseconds), fires then, and only then is C written.

"C" above is the checkpoint's timestamp, not always its instant: a wake of the ledger
that closes several instants at once (catching up) stamps everything it emits at the
wake's own time W >= C (pipeline.transforms.keep_ledger), because only W is held back by
its timer; so the commit waits for every writer to pass W, which covers all the wake's
outputs up to C and perhaps a few after it (harmless: it only waits longer).

Checkpoints that pile up behind a slow writer are coalesced: when the timer fires, the
newest checkpoint it covers is written and the older ones are dropped (C is all a
restart needs). The write is conditional on asOf like every other, so an older
checkpoint never replaces a newer one, and a repeated one changes nothing. A ledger
too big for one DynamoDB item is stored in parts first and its head last
(pipeline.sinks.dynamodb.write_checkpoint), so a reader never sees half a checkpoint.

Coalesced value writes keep this order: a wake that closes many instants writes each
key once, stamped at the instant of its last change, and a key changed after C is
written again by a restart from C (the argument in full: pipeline.sinks.dynamodb,
_WriteCounterUpdatesFn).
"""

from typing import NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.typehints import KV

from pipeline.aws import RETRY_FOR_SECS
from pipeline.rules.ledger import Checkpoint
from pipeline.rules.tables import PIPELINE_NAME
from pipeline.runtime import metrics
from pipeline.runtime.timestamps import ms_to_timestamp, timestamp_to_ms
from pipeline.sinks.dynamodb import count_outcome, dynamodb_client_factory, write_checkpoint


class Pending(NamedTuple):
    """A checkpoint waiting to be written, with the timestamp it came with."""

    stamped_ms: int
    checkpoint: Checkpoint


def commit_ms(pending: Pending) -> int:
    """Just after the checkpoint's timestamp: outputs stamped at that time are done."""
    return pending.stamped_ms + 1


def due_and_later(pending: list, fired_at_ms: int) -> tuple:
    """(the newest checkpoint due by `fired_at_ms` or None, the Pending not due yet)."""
    due = [p.checkpoint for p in pending if commit_ms(p) <= fired_at_ms]
    later = [p for p in pending if commit_ms(p) > fired_at_ms]
    newest = max(due, key=lambda c: c.as_of_ms, default=None)
    return newest, later


class _CommitFn(beam.DoFn):
    """One key. Holds the checkpoints not written yet; writes each when its timer fires."""

    PENDING = BagStateSpec("pending_checkpoints", PickleCoder())
    COMMIT = TimerSpec("commit", TimeDomain.WATERMARK)

    def __init__(self, client_factory, progress_table: str, retry_for_secs: float):
        self._client_factory = client_factory
        self._progress_table = progress_table
        self._retry_for_secs = retry_for_secs
        self._client = None
        self._writes = metrics.counter("dynamodb_writes")
        self._retries = metrics.counter("dynamodb_retries")
        self._repeats = metrics.counter("dynamodb_rejected_repeats")
        self._checkpoints = metrics.counter("dynamodb_checkpoints")
        self._committed = metrics.gauge("committed_until_ms")

    def __getstate__(self):
        return dict(self.__dict__, _client=None)

    def setup(self):
        self._client = self._client_factory()

    def process(
        self,
        element,
        timestamp=beam.DoFn.TimestampParam,
        pending=beam.DoFn.StateParam(PENDING),
        commit=beam.DoFn.TimerParam(COMMIT),
    ):
        _, checkpoint = element
        waiting = Pending(timestamp_to_ms(timestamp), checkpoint)
        held = list(pending.read())
        pending.add(waiting)
        if not held or commit_ms(waiting) < min(commit_ms(p) for p in held):
            commit.set(ms_to_timestamp(commit_ms(waiting)))

    @on_timer(COMMIT)
    def on_commit(
        self,
        fired_at=beam.DoFn.TimestampParam,
        pending=beam.DoFn.StateParam(PENDING),
        commit=beam.DoFn.TimerParam(COMMIT),
    ):
        newest, later = due_and_later(list(pending.read()), fired_at.micros // 1000)
        if newest is not None:
            for outcome in write_checkpoint(
                self._client, self._progress_table, PIPELINE_NAME, newest, self._retry_for_secs
            ):
                count_outcome(outcome, self._writes, self._retries, self._repeats)
            self._checkpoints.inc()
            self._committed.set(newest.as_of_ms)
        pending.clear()
        for waiting in later:
            pending.add(waiting)
        if later:
            commit.set(ms_to_timestamp(min(commit_ms(p) for p in later)))


class CommitCheckpoints(beam.PTransform):
    """Checkpoints (timestamped at their instant) -> the progress table, each once every
    PCollection in `written_before` ({name: a writer's output, each element timestamped
    at the instant of what it wrote}) has passed its instant."""

    def __init__(
        self,
        region,
        endpoint_url,
        progress_table,
        written_before,
        client_factory=None,
        retry_for_secs=RETRY_FOR_SECS,
    ):
        super().__init__()
        self._written_before = dict(written_before)
        self._fn = _CommitFn(
            client_factory or dynamodb_client_factory(region, endpoint_url), progress_table, retry_for_secs
        )

    def expand(self, checkpoints):
        # The writers' outputs only hold the watermark back; their elements are dropped.
        barriers = [
            written
            | f"WaitFor{name}" >> beam.Filter(lambda _: False)
            | f"Global{name}" >> beam.WindowInto(window.GlobalWindows())
            for name, written in sorted(self._written_before.items())
        ]
        return (
            (checkpoints, *barriers)
            | "CheckpointsAfterWrites" >> beam.Flatten()
            | "KeyForCommit" >> beam.Map(lambda c: ("game", c)).with_output_types(KV[str, Checkpoint])
            # ("game", Checkpoint): one key
            | "WriteCheckpoint" >> beam.ParDo(self._fn)
        )
