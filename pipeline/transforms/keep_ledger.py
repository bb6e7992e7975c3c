"""KeepLedger: interval sums -> counter updates, snapshots and checkpoints, in order."""

import logging

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.worker.statecache import CacheAware
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.typehints import KV

from pipeline.rules.ledger import (
    Checkpoint,
    IntervalSum,
    Ledger,
    LedgerStep,
    advance_ledger,
    close_everything,
    coalesce_updates,
    is_stale,
    next_wake_ms,
    values_in,
    wake_for_sum_ms,
)
from pipeline.runtime import metrics
from pipeline.runtime.beam_patches import tune_sdk_worker
from pipeline.runtime.timestamps import ms_to_timestamp, timestamp_to_ms

_LOG = logging.getLogger(__name__)


class _StoredLedger(CacheAware):
    """The ledger as the state cell holds it. An engine with a state cache (the
    FnApiRunner, Flink) weighs every value it caches by walking all its objects: a
    third of a second per write for a ledger of fifty thousand transition pairs. This
    wrapper gives the cache an estimate instead (`__sizeof__`, nothing to walk): the
    entries times what one costs in memory, about 150 bytes."""

    ENTRY_BYTES = 150

    def __init__(self, ledger: Ledger):
        super().__init__()
        self.ledger = ledger

    def get_referents_for_cache(self) -> list:
        return []

    def __sizeof__(self) -> int:
        ledger = self.ledger
        entries = len(ledger.levels) + len(ledger.transition_totals) + len(ledger.window_transitions)
        return 64 + self.ENTRY_BYTES * entries


class _EmitStepsFn(beam.DoFn):
    """What both ways of keeping the ledger share: where a run starts from, and each
    step's outputs, counted, each timestamped at its instant. The CounterUpdates of a
    step that closes several instants (a backlog, a restart, a bounded input) are
    coalesced to each key's latest value (`coalesce_updates`; why that keeps the
    checkpoint's order: pipeline.sinks.dynamodb)."""

    def __init__(self, update_ms: int, window_ms: int, resume_from: Checkpoint | None, stale_after_ms=None):
        self._update_ms = update_ms
        self._window_ms = window_ms
        self._resume_from = resume_from
        self._stale_after_ms = stale_after_ms
        self._snapshots = metrics.counter("snapshots")
        self._updates = metrics.counter("counter_updates")
        self._coalesced = metrics.counter("counter_values_coalesced")
        self._already_applied = metrics.counter("interval_sums_already_applied")
        self._closed_until = metrics.gauge("ledger_closed_until_ms")

    def _start(self) -> Ledger:
        if self._resume_from is not None:
            # After a restart: continue from the last committed window.
            return Ledger.resume_from(self._resume_from, self._update_ms)
        return Ledger()

    def _outputs(self, step: LedgerStep, woken_at_ms: int | None = None):
        """The step's outputs, each timestamped at its instant, or at `woken_at_ms` (the
        timer's time) when that is later: a timer holds the watermark at its own time
        only, so an output stamped before it could already be behind the watermark
        downstream, and the commit's barrier (pipeline.sinks.commit) would not wait for
        it. Live, one instant per wake, the two are the same."""

        def stamp(instant_ms):
            return ms_to_timestamp(instant_ms if woken_at_ms is None else max(instant_ms, woken_at_ms))

        self._already_applied.inc(len(step.already_applied))
        updates = coalesce_updates(step.updates)
        self._coalesced.inc(values_in(step.updates) - values_in(updates))
        for update in updates:
            self._updates.inc()
            yield pvalue.TaggedOutput(
                KeepLedger.UPDATES, window.TimestampedValue(update, stamp(update.as_of_ms))
            )
        for snapshot in step.snapshots:
            self._snapshots.inc()
            yield window.TimestampedValue(snapshot, stamp(snapshot.window_end_ms))
        for checkpoint in step.checkpoints:
            yield pvalue.TaggedOutput(
                KeepLedger.CHECKPOINTS, window.TimestampedValue(checkpoint, stamp(checkpoint.as_of_ms))
            )
        if step.ledger.next_instant_ms is not None:
            self._closed_until.set(step.ledger.next_instant_ms - self._update_ms)

    def _report_drift(self, ledger: Ledger):
        if is_stale(ledger, self._stale_after_ms):
            _LOG.error(
                "drift: levels %s still counted with no transition since %s; publishing stops",
                dict(ledger.levels),
                ledger.last_change_ms,
            )


class _LedgerFn(_EmitStepsFn):
    """One key for the whole game: the ledger holds every level's count and every
    transition's total (hundreds of levels, tens of thousands of transition pairs, not
    players), and closes each update instant once the watermark has passed it (rules
    in `pipeline.rules.ledger`).

    The ledger is read and written once per wake, never per element: an engine without
    a state cache (Prism) hands the whole value over at every read, so `process` reads
    only two small cells (the ledger's next instant, the timer's instant)."""

    LEDGER = ReadModifyWriteStateSpec("ledger", PickleCoder())
    PENDING = BagStateSpec("pending_sums", PickleCoder())
    WAKE_MS = ReadModifyWriteStateSpec("wake_ms", PickleCoder())
    NEXT_MS = ReadModifyWriteStateSpec("next_instant_ms", PickleCoder())  # the ledger's, kept apart
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)

    def setup(self):
        tune_sdk_worker()

    def _read(self, ledger_state) -> Ledger:
        stored = ledger_state.read()
        if stored is None:
            return self._start()
        return stored.ledger if isinstance(stored, _StoredLedger) else stored  # or an earlier version's

    def _next_instant_ms(self, next_state, ledger_state) -> int | None:
        next_ms = next_state.read()
        if next_ms is not None:
            return next_ms
        stored = ledger_state.read()  # state kept by an earlier version
        if stored is not None:
            return (stored.ledger if isinstance(stored, _StoredLedger) else stored).next_instant_ms
        # Before the first wake: where the run starts, without building its ledger (after
        # a restart that copies every transition total: not once per element).
        return None if self._resume_from is None else self._resume_from.as_of_ms + self._update_ms

    def process(
        self,
        element,
        ledger_state=beam.DoFn.StateParam(LEDGER),
        pending=beam.DoFn.StateParam(PENDING),
        wake_state=beam.DoFn.StateParam(WAKE_MS),
        next_state=beam.DoFn.StateParam(NEXT_MS),
        close=beam.DoFn.TimerParam(CLOSE),
    ):
        _, interval_sum = element
        pending.add(interval_sum)
        wake_ms = wake_for_sum_ms(
            self._next_instant_ms(next_state, ledger_state), interval_sum.interval_end_ms
        )
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
        next_state=beam.DoFn.StateParam(NEXT_MS),
        close=beam.DoFn.TimerParam(CLOSE),
    ):
        step = advance_ledger(
            self._read(ledger_state),
            list(pending.read()),
            timestamp_to_ms(fired_at),
            self._update_ms,
            self._window_ms,
        )
        yield from self._outputs(step, timestamp_to_ms(fired_at))
        pending.clear()
        for interval_sum in step.later:
            pending.add(interval_sum)
        ledger_state.write(_StoredLedger(step.ledger))
        next_state.write(step.ledger.next_instant_ms)
        wake_ms = next_wake_ms(step.ledger, step.later, self._window_ms, self._stale_after_ms)
        if wake_ms is None:
            self._report_drift(step.ledger)
        wake_state.write(wake_ms)
        if wake_ms is not None:
            close.set(ms_to_timestamp(wake_ms))


class _CloseEverythingFn(_EmitStepsFn):
    """Bounded input, in batch mode: every interval sum at once, after a GroupByKey, and
    the ledger closed as `_LedgerFn` closes it once the watermark reaches +infinity at
    the end of the input (`close_everything`: its wakes, one after another). The same
    outputs, without a state read per sum (which an engine with no state cache, or
    with several worker processes, answers over the wire each time)."""

    def process(self, element):
        _, sums = element
        ledger = self._start()
        for step in close_everything(ledger, sums, self._update_ms, self._window_ms, self._stale_after_ms):
            yield from self._outputs(step)
            ledger = step.ledger
        self._report_drift(ledger)


class KeepLedger(beam.PTransform):
    """IntervalSum -> Snapshot (main output: one per window from the first window
    with an event on, in order), UPDATES: CounterUpdates of the keys that changed, each
    key once per wake with its latest value (one CounterUpdate per update instant live),
    and CHECKPOINTS: the whole ledger at the latest window end of each wake. Each is
    timestamped at its instant.

    Streaming (or any unbounded input): a stateful DoFn on one key with an event-time
    timer. Bounded input in batch mode: a GroupByKey on that key and the same rules
    run once over every sum."""

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
        settings = (self._update_ms, self._window_ms, self._resume_from, self._stale_after_ms)
        keyed = interval_sums | "KeyForLedger" >> beam.Map(lambda s: ("game", s)).with_output_types(
            KV[str, IntervalSum]
        )
        # ("game", IntervalSum): one key, the whole game
        streaming = interval_sums.pipeline.options.view_as(StandardOptions).streaming
        if interval_sums.is_bounded and not streaming:
            return (
                keyed
                | "GatherForLedger" >> beam.GroupByKey()
                | "CloseEverything"
                >> beam.ParDo(_CloseEverythingFn(*settings)).with_outputs(
                    self.UPDATES, self.CHECKPOINTS, main=self.SNAPSHOTS
                )
            )
        return keyed | "CloseInstants" >> beam.ParDo(_LedgerFn(*settings)).with_outputs(
            self.UPDATES, self.CHECKPOINTS, main=self.SNAPSHOTS
        )
