"""CountPerInterval: transitions -> the sum of each key's deltas per update interval."""

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import window
from apache_beam.typehints import KV, Tuple
from apache_beam.utils.timestamp import Timestamp

from pipeline.rules.ledger import (
    LEVEL,
    TRANSITION,
    IntervalSum,
)
from pipeline.rules.player_state import OUTSIDE
from pipeline.runtime.timestamps import timestamp_to_ms

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
