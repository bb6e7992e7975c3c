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
from apache_beam.transforms.window import GlobalWindow
from apache_beam.typehints import KV
from apache_beam.utils.timestamp import Duration, Timestamp

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
    only two small cells (the ledger's next instant, the timer's instant).

    When nothing is pending after a close, the next window end is still due (a
    snapshot per window while players are in levels), but an event-time timer there
    would hold back the sums after it: Prism hands a key its elements and timers in
    timestamp order, so a backlog would reach the ledger one window per wake (measured:
    a 15k-event backlog's 36 windows in 36 rounds, each writing its own values). So a
    quiet ledger sets its CLOSE timer at the end of time, where it blocks nothing and
    fires only when the input ends (then closing what is left, as the window
    ends' timers would), and a processing-time QUIET timer `update` later: if no sum has come
    by then, it sets CLOSE at the next window end, as before. A sum that comes first
    moves CLOSE to its own instant (`process`), so a backlog is closed in a few big
    wakes, each key written once per wake. QUIET, set while a close fires, holds the
    output watermark at that close's instant until it fires, so nothing the next close
    emits can be behind the watermark downstream."""

    LEDGER = ReadModifyWriteStateSpec("ledger", PickleCoder())
    PENDING = BagStateSpec("pending_sums", PickleCoder())
    WAKE_MS = ReadModifyWriteStateSpec("wake_ms", PickleCoder())
    NEXT_MS = ReadModifyWriteStateSpec("next_instant_ms", PickleCoder())  # the ledger's, kept apart
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)
    QUIET = TimerSpec("quiet", TimeDomain.REAL_TIME)
    # CLOSE of a quiet ledger: the global window's last instant, past every sum.
    END_MS = timestamp_to_ms(GlobalWindow().max_timestamp())

    def __init__(self, *settings):
        super().__init__(*settings)
        self._wakes = metrics.counter("ledger_wakes")

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
        quiet=beam.DoFn.TimerParam(QUIET),
    ):
        ledger, sums = self._read(ledger_state), list(pending.read())
        if timestamp_to_ms(fired_at) >= self.END_MS:
            # The input has ended: no sum can come any more. Close what is left as the
            # window ends' timers would, one after another, each step stamped at its
            # own instants (QUIET's hold, at the close before, is still on in this
            # firing), and leave no timer behind: a runner ends a job only once none
            # is left (Flink waits for a processing-time timer's hold forever).
            quiet.clear()
            for step in close_everything(
                ledger, sums, self._update_ms, self._window_ms, self._stale_after_ms
            ):
                self._wakes.inc()
                yield from self._outputs(step)
                ledger, sums = step.ledger, step.later
            self._report_drift(ledger)
            self._keep(ledger, sums, ledger_state, pending, next_state)
            wake_state.write(None)
            return
        self._wakes.inc()
        step = advance_ledger(ledger, sums, timestamp_to_ms(fired_at), self._update_ms, self._window_ms)
        yield from self._outputs(step, timestamp_to_ms(fired_at))
        self._keep(step.ledger, step.later, ledger_state, pending, next_state)
        # No staleness rule while the input runs: a player who keeps sending the level
        # they are in stays there without a transition, for as long as they like.
        wake_ms = next_wake_ms(step.ledger, step.later, self._window_ms)
        if wake_ms is None:  # quiet: no player, no transition in the window
            quiet.clear()
        elif not step.later:  # quiet: see the class docstring
            quiet.set(Timestamp.now() + Duration(micros=self._update_ms * 1000))
            wake_ms = self.END_MS
        wake_state.write(wake_ms)
        if wake_ms is not None:
            close.set(ms_to_timestamp(wake_ms))

    @staticmethod
    def _keep(ledger, later, ledger_state, pending, next_state):
        pending.clear()
        for interval_sum in later:
            pending.add(interval_sum)
        ledger_state.write(_StoredLedger(ledger))
        next_state.write(ledger.next_instant_ms)

    @on_timer(QUIET)
    def on_quiet(
        self,
        ledger_state=beam.DoFn.StateParam(LEDGER),
        pending=beam.DoFn.StateParam(PENDING),
        wake_state=beam.DoFn.StateParam(WAKE_MS),
        close=beam.DoFn.TimerParam(CLOSE),
    ):
        if wake_state.read() != self.END_MS:
            return  # a sum came meanwhile and set CLOSE at its instant
        wake_ms = next_wake_ms(self._read(ledger_state), list(pending.read()), self._window_ms)
        if wake_ms is not None:
            wake_state.write(wake_ms)
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
