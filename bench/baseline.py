"""The straightforward Beam pipeline of the same shape, for comparison (bench item 1b).

Parse with the Snowplow SDK's `transform`, key by player, one stateful DoFn, windowed
sums: what one would write first. The DoFn applies each observation when it arrives
(assuming arrival order is event-time order) and keeps one event-time timer for the
player's timeout. It reads the same files with the project's source and does not
write snapshots, so it does less than `pipeline.main`, never more.
"""

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp
from snowplow_analytics_sdk.event_transformer import transform
from snowplow_analytics_sdk.snowplow_event_transformation_exception import (
    SnowplowEventTransformationException,
)

from pipeline.rules.times import parse_timestamp_ms
from pipeline.sources.files import ReadEnrichedFiles

LEVEL_CONTEXT = "contexts_com_codecombat_level_context_1"


def parse_with_sdk(record):
    try:
        event = transform(record.data.decode("utf-8"))
    except (SnowplowEventTransformationException, UnicodeDecodeError):
        return
    time_ms = parse_timestamp_ms(event["collector_tstamp"])
    for context in event.get(LEVEL_CONTEXT, []):
        if isinstance(context, dict) and context.get("user_id") and context.get("level_slug"):
            yield window.TimestampedValue(
                (context["user_id"], (time_ms, context["level_slug"])), time_ms / 1000
            )


class TrackFn(beam.DoFn):
    LEVEL = ReadModifyWriteStateSpec("level", PickleCoder())  # (level, last_seen_ms)
    TIMEOUT = TimerSpec("timeout", TimeDomain.WATERMARK)

    def __init__(self, timeout_ms):
        self._timeout_ms = timeout_ms

    def process(self, element, state=beam.DoFn.StateParam(LEVEL), timeout=beam.DoFn.TimerParam(TIMEOUT)):
        _, (time_ms, level) = element
        current = state.read()
        if current is not None and time_ms >= current[1] + self._timeout_ms:
            yield window.TimestampedValue((current[0], ""), (current[1] + self._timeout_ms) / 1000)
            current = None
        if current is None or current[0] != level:
            yield window.TimestampedValue(("" if current is None else current[0], level), time_ms / 1000)
        state.write((level, time_ms))
        timeout.set(Timestamp(micros=(time_ms + self._timeout_ms) * 1000))

    @on_timer(TIMEOUT)
    def on_timeout(self, fired_at=beam.DoFn.TimestampParam, state=beam.DoFn.StateParam(LEVEL)):
        current = state.read()
        if current is not None:
            yield window.TimestampedValue((current[0], ""), fired_at)
        state.clear()


def deltas(transition):
    from_level, to_level = transition
    yield f"{from_level}/{to_level}", 1
    if from_level:
        yield from_level, -1
    if to_level:
        yield to_level, 1


def build(pipeline, input_pattern, output_prefix, timeout_secs=300, window_secs=60):
    return (
        pipeline
        | "Read" >> ReadEnrichedFiles(input_pattern)
        | "ParseWithSdk" >> beam.FlatMap(parse_with_sdk)
        | "Track" >> beam.ParDo(TrackFn(timeout_secs * 1000))
        | "Deltas" >> beam.FlatMap(deltas)
        | "Windows" >> beam.WindowInto(window.FixedWindows(window_secs))
        | "Sum" >> beam.CombinePerKey(sum)
        | "Format" >> beam.MapTuple(lambda key, total: f"{key}\t{total}")
        | "Write" >> beam.io.WriteToText(output_prefix)
    )
