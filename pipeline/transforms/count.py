"""CountPerInterval and KeepLedger: transitions -> interval sums -> counter updates and snapshots."""

import logging

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.typehints import KV, Tuple
from apache_beam.utils.timestamp import Timestamp

from pipeline.rules.ledger import (
    LEVEL,
    TRANSITION,
    Checkpoint,
    IntervalSum,
    Ledger,
    advance_ledger,
    is_stale,
    next_wake_ms,
)
from pipeline.rules.player_state import OUTSIDE
from pipeline.runtime import metrics
from pipeline.runtime.beam_patches import size_state_cheaply
from pipeline.transforms.track_players import ms_to_timestamp, timestamp_to_ms

_LOG = logging.getLogger(__name__)


def deltas_of(transition):
    """A transition A/B is +1 for the key "A/B", -1 for level A and +1 for level B."""
    yield (TRANSITION, transition.key), 1
    if transition.from_level != OUTSIDE:
        yield (LEVEL, transition.from_level), -1
    if transition.to_level != OUTSIDE:
        yield (LEVEL, transition.to_level), 1


class _ToIntervalSumFn(beam.DoFn):
    def process(self, element, win=beam.DoFn.WindowParam):
        (kind, key), total = element
        yield IntervalSum(kind, key, timestamp_to_ms(win.end), total)


class _DeltasByIntervalFn(beam.DoFn):
    """Bounded input: each delta keyed by its interval too, ((kind, key, interval end),
    delta), so one combine in the global window sums them: the same sums as the
    windowed combine, without its trigger machinery (a timer per key and window)."""

    def __init__(self, update_ms: int):
        self._update_ms = update_ms

    def process(self, transition):
        # The epoch-aligned interval [end - update, end) holding the transition, as FixedWindows has it.
        end_ms = transition.time_ms - transition.time_ms % self._update_ms + self._update_ms
        for (kind, key), delta in deltas_of(transition):
            yield (kind, key, end_ms), delta


def _to_interval_sum(element):
    (kind, key, end_ms), total = element
    # Timestamped like the windowed combine's output: its window's last microsecond.
    return window.TimestampedValue(IntervalSum(kind, key, end_ms, total), Timestamp(micros=end_ms * 1000 - 1))


class CountPerInterval(beam.PTransform):
    """Transition -> IntervalSum per key and `update` interval, in the global window,
    each timestamped at the end of its interval (minus 1 µs), when the watermark has
    passed that end. Combined before the shuffle, so the volume follows the keys
    touched per interval, not the events.

    Streaming: fixed windows of `update` and a combine per key and window. Bounded
    input in batch mode: one combine per (key, interval) in the global window, the
    same sums (on a bounded input everything is summed once it has ended anyway)."""

    def __init__(self, update_secs: int):
        super().__init__()
        self._update_secs = update_secs

    def expand(self, transitions):
        streaming = transitions.pipeline.options.view_as(StandardOptions).streaming
        if transitions.is_bounded and not streaming:
            return (
                transitions
                | "ToDeltas"
                >> beam.ParDo(_DeltasByIntervalFn(int(self._update_secs * 1000))).with_output_types(
                    KV[Tuple[str, str, int], int]
                )
                # ((kind, key, interval_end_ms), delta)
                | "SumPerInterval" >> beam.CombinePerKey(sum)
                | "ToIntervalSums" >> beam.Map(_to_interval_sum)
            )
        return (
            transitions
            | "ToDeltas" >> beam.FlatMap(deltas_of)
            # ((kind, key), delta) at the transition's time
            | "IntoIntervals" >> beam.WindowInto(window.FixedWindows(self._update_secs))
            | "SumPerInterval" >> beam.CombinePerKey(sum)
            | "ToIntervalSums" >> beam.ParDo(_ToIntervalSumFn())
            | "IntoGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        )


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
