"""CountPerInterval and BuildSnapshots: transitions -> interval sums -> window snapshots."""

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.typehints import KV

from pipeline import metrics
from pipeline.levels import OUTSIDE
from pipeline.snapshots import (
    LEVEL,
    TRANSITION,
    IntervalSum,
    SnapshotState,
    build_snapshots,
    next_snapshot_wake_ms,
)
from pipeline.transforms.track import ms_to_timestamp, timestamp_to_ms


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


class CountPerInterval(beam.PTransform):
    """Transition -> IntervalSum per key and `update` interval, in the global window,
    each timestamped at the end of its interval (minus 1 µs), when the watermark has
    passed that end. Combined before the shuffle, so the volume follows the keys
    touched per interval, not the events."""

    def __init__(self, update_secs: int):
        super().__init__()
        self._update_secs = update_secs

    def expand(self, transitions):
        return (
            transitions
            | "ToDeltas" >> beam.FlatMap(deltas_of)
            # ((kind, key), delta) at the transition's time
            | "IntoIntervals" >> beam.WindowInto(window.FixedWindows(self._update_secs))
            | "SumPerInterval" >> beam.CombinePerKey(sum)
            | "ToIntervalSums" >> beam.ParDo(_ToIntervalSumFn())
            | "IntoGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        )


class _BuildSnapshotsFn(beam.DoFn):
    """One key for the whole game: holds every level's count (hundreds of levels, not
    players) and publishes each window once the watermark has passed its end."""

    STATE = ReadModifyWriteStateSpec("snapshot_state", PickleCoder())
    PENDING = BagStateSpec("pending_sums", PickleCoder())
    WAKE_MS = ReadModifyWriteStateSpec("wake_ms", PickleCoder())
    PUBLISH = TimerSpec("publish", TimeDomain.WATERMARK)

    def __init__(self, window_ms: int):
        self._window_ms = window_ms
        self._snapshots = metrics.counter("snapshots")

    def process(
        self,
        element,
        state=beam.DoFn.StateParam(STATE),
        pending=beam.DoFn.StateParam(PENDING),
        publish=beam.DoFn.TimerParam(PUBLISH),
        wake_state=beam.DoFn.StateParam(WAKE_MS),
    ):
        _, interval_sum = element
        pending.add(interval_sum)
        current = state.read() or SnapshotState()
        wake_ms = next_snapshot_wake_ms(current, [interval_sum], self._window_ms)
        previous = wake_state.read()
        if previous is None or wake_ms < previous:
            wake_state.write(wake_ms)
            publish.set(ms_to_timestamp(wake_ms))

    @on_timer(PUBLISH)
    def on_publish(
        self,
        fired_at=beam.DoFn.TimestampParam,
        state=beam.DoFn.StateParam(STATE),
        pending=beam.DoFn.StateParam(PENDING),
        publish=beam.DoFn.TimerParam(PUBLISH),
        wake_state=beam.DoFn.StateParam(WAKE_MS),
    ):
        current = state.read() or SnapshotState()
        current, snapshots, later = build_snapshots(
            current, list(pending.read()), timestamp_to_ms(fired_at), self._window_ms
        )
        for snapshot in snapshots:
            self._snapshots.inc()
            yield window.TimestampedValue(snapshot, ms_to_timestamp(snapshot.window_end_ms))
        pending.clear()
        for interval_sum in later:
            pending.add(interval_sum)
        state.write(current)
        wake_ms = next_snapshot_wake_ms(current, later, self._window_ms)
        wake_state.write(wake_ms)
        if wake_ms is not None:
            publish.set(ms_to_timestamp(wake_ms))


class BuildSnapshots(beam.PTransform):
    """IntervalSum -> Snapshot, one per window from the first window with an event
    on, in window order, each as of its window end."""

    def __init__(self, window_secs: int):
        super().__init__()
        self._window_ms = int(window_secs * 1000)

    def expand(self, interval_sums):
        return (
            interval_sums
            | "KeyForSnapshots" >> beam.Map(lambda s: ("game", s)).with_output_types(KV[str, IntervalSum])
            # ("game", IntervalSum): one key, the whole game
            | "BuildSnapshots" >> beam.ParDo(_BuildSnapshotsFn(self._window_ms))
        )
