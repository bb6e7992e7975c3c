"""KeepLedger: interval sums -> counter updates, snapshots and checkpoints, in order."""

import logging

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.typehints import KV

from pipeline.rules.ledger import (
    Checkpoint,
    IntervalSum,
    Ledger,
    advance_ledger,
    is_stale,
    next_wake_ms,
)
from pipeline.runtime import metrics
from pipeline.runtime.beam_patches import size_state_cheaply
from pipeline.runtime.timestamps import ms_to_timestamp, timestamp_to_ms

_LOG = logging.getLogger(__name__)


class _LedgerFn(beam.DoFn):
    """One key for the whole game: the ledger holds every level's count and every
    transition's total (hundreds to thousands of keys, not players), and closes each
    update instant once the watermark has passed it (rules in `pipeline.rules.ledger`)."""

    LEDGER = ReadModifyWriteStateSpec("ledger", PickleCoder())
    PENDING = BagStateSpec("pending_sums", PickleCoder())
    WAKE_MS = ReadModifyWriteStateSpec("wake_ms", PickleCoder())
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)

    def __init__(self, update_ms: int, window_ms: int, resume_from: Checkpoint | None, stale_after_ms=None):
        self._update_ms = update_ms
        self._window_ms = window_ms
        self._resume_from = resume_from
        self._stale_after_ms = stale_after_ms
        self._snapshots = metrics.counter("snapshots")
        self._updates = metrics.counter("counter_updates")
        self._already_applied = metrics.counter("interval_sums_already_applied")
        self._closed_until = metrics.gauge("ledger_closed_until_ms")

    def setup(self):
        size_state_cheaply()

    def _read(self, ledger_state) -> Ledger:
        ledger = ledger_state.read()
        if ledger is None and self._resume_from is not None:
            # First sight after a restart: continue from the last committed window.
            ledger = Ledger.resume_from(self._resume_from, self._update_ms)
        return ledger or Ledger()

    def process(
        self,
        element,
        ledger_state=beam.DoFn.StateParam(LEDGER),
        pending=beam.DoFn.StateParam(PENDING),
        wake_state=beam.DoFn.StateParam(WAKE_MS),
        close=beam.DoFn.TimerParam(CLOSE),
    ):
        _, interval_sum = element
        pending.add(interval_sum)
        wake_ms = next_wake_ms(self._read(ledger_state), [interval_sum], self._window_ms)
        previous = wake_state.read()
        if previous is None or wake_ms < previous:
            wake_state.write(wake_ms)
            close.set(ms_to_timestamp(wake_ms))

    @on_timer(CLOSE)
    def on_close(
        self,
        fired_at=beam.DoFn.TimestampParam,
        ledger_state=beam.DoFn.StateParam(LEDGER),
        pending=beam.DoFn.StateParam(PENDING),
        wake_state=beam.DoFn.StateParam(WAKE_MS),
        close=beam.DoFn.TimerParam(CLOSE),
    ):
        step = advance_ledger(
            self._read(ledger_state),
            list(pending.read()),
            timestamp_to_ms(fired_at),
            self._update_ms,
            self._window_ms,
        )
        self._already_applied.inc(len(step.already_applied))
        for update in step.updates:
            self._updates.inc()
            yield pvalue.TaggedOutput(
                KeepLedger.UPDATES, window.TimestampedValue(update, ms_to_timestamp(update.as_of_ms))
            )
        for snapshot in step.snapshots:
            self._snapshots.inc()
            yield window.TimestampedValue(snapshot, ms_to_timestamp(snapshot.window_end_ms))
        for checkpoint in step.checkpoints:
            yield pvalue.TaggedOutput(
                KeepLedger.CHECKPOINTS,
                window.TimestampedValue(checkpoint, ms_to_timestamp(checkpoint.as_of_ms)),
            )
        if step.ledger.next_instant_ms is not None:
            self._closed_until.set(step.ledger.next_instant_ms - self._update_ms)
        pending.clear()
        for interval_sum in step.later:
            pending.add(interval_sum)
        ledger_state.write(step.ledger)
        wake_ms = next_wake_ms(step.ledger, step.later, self._window_ms, self._stale_after_ms)
        if wake_ms is None and is_stale(step.ledger, self._stale_after_ms):
            _LOG.error(
                "drift: levels %s still counted with no transition since %s; publishing stops",
                dict(step.ledger.levels),
                step.ledger.last_change_ms,
            )
        wake_state.write(wake_ms)
        if wake_ms is not None:
            close.set(ms_to_timestamp(wake_ms))


class KeepLedger(beam.PTransform):
    """IntervalSum -> Snapshot (main output: one per window from the first window
    with an event on, in order), UPDATES: CounterUpdate per update instant with
    the keys that changed, and CHECKPOINTS: the whole ledger at each window end.
    Each is timestamped at its instant."""

    SNAPSHOTS = "snapshots"
    UPDATES = "updates"
    CHECKPOINTS = "checkpoints"

    def __init__(
        self,
        update_secs: int,
        window_secs: int,
        resume_from: Checkpoint | None = None,
        timeout_secs: int | None = None,
    ):
        super().__init__()
        self._update_ms = int(update_secs * 1000)
        self._window_ms = int(window_secs * 1000)
        self._resume_from = resume_from
        # Without a transition for longer than a player can stay, a count is drift.
        self._stale_after_ms = None if timeout_secs is None else int(timeout_secs * 1000) + self._window_ms

    def expand(self, interval_sums):
        return (
            interval_sums
            | "KeyForLedger" >> beam.Map(lambda s: ("game", s)).with_output_types(KV[str, IntervalSum])
            # ("game", IntervalSum): one key, the whole game
            | "CloseInstants"
            >> beam.ParDo(
                _LedgerFn(self._update_ms, self._window_ms, self._resume_from, self._stale_after_ms)
            ).with_outputs(self.UPDATES, self.CHECKPOINTS, main=self.SNAPSHOTS)
        )
