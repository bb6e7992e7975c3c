"""ParseEnrichedEvents: enriched TSV records -> level observations, bad lines -> dead letters."""

import time

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.window import TimestampedValue

from pipeline.rules.observations import (
    DEFAULT_EVENT_TIME_FIELD,
    BadLine,
    EnrichedRecord,
    dead_letter,
    line_event_time_ms,
    parse_enriched_line,
)
from pipeline.runtime import metrics
from pipeline.runtime.beam_patches import tune_sdk_worker
from pipeline.runtime.timestamps import ms_to_timestamp


class _ParseLineFn(beam.DoFn):
    """Thin: the rules are in `pipeline.rules.observations.parse_enriched_line`."""

    def __init__(self, event_time_field: str, count_per_bundle: bool = False):
        self._event_time_field = event_time_field
        # Bounded input: counted per bundle (an inc() costs about a microsecond, and there
        # were two per line); a stream: per line, so the live status sees every record
        # read at once (a reader's bundle on Prism can outlast a status refresh).
        self._count_per_bundle = count_per_bundle
        self._lines = metrics.counter("lines_read")
        self._without_context = metrics.counter("lines_without_level_context")
        self._observations = metrics.counter("observations")
        self._bad = {}

    def setup(self):
        tune_sdk_worker()

    def start_bundle(self):
        self._counts = {"lines": 0, "without_context": 0, "observations": 0}

    def finish_bundle(self):
        self._add_counts()

    def _add_counts(self):
        counted = self._counts
        for counter, name in (
            (self._lines, "lines"),
            (self._without_context, "without_context"),
            (self._observations, "observations"),
        ):
            if counted[name]:
                counter.inc(counted[name])
                counted[name] = 0

    def _line_done(self):
        if not self._count_per_bundle:
            self._add_counts()

    # No DoFn parameters besides the element: Beam then calls process() the fast way.
    def process(self, record: EnrichedRecord):
        counted = self._counts
        counted["lines"] += 1
        # When the line was received: its Kinesis arrival, else now (a file line is read
        # now, so it cannot be dated after that).
        received_ms = record.received_ms if record.received_ms is not None else int(time.time() * 1000)
        try:
            observations = parse_enriched_line(record.data, self._event_time_field, received_ms)
        except BadLine as bad:
            self._bad_counter(bad.reason).inc()
            # Dated by the line's own event time when it has a usable one, so the
            # dead letters of a window are the bad lines of that window.
            time_ms = line_event_time_ms(record.data, self._event_time_field, received_ms)
            yield pvalue.TaggedOutput(
                ParseEnrichedEvents.DEAD_LETTERS,
                dead_letter(bad.reason, bad.detail, record.position, record.data, time_ms),
            )
            self._line_done()
            return
        if not observations:
            counted["without_context"] += 1
        counted["observations"] += len(observations)
        self._line_done()
        for observation in observations:
            yield TimestampedValue(observation, ms_to_timestamp(observation.event_time_ms))

    def _bad_counter(self, reason):
        if reason not in self._bad:
            self._bad[reason] = metrics.counter(f"dead_letters_{reason}")
        return self._bad[reason]


class ParseEnrichedEvents(beam.PTransform):
    """EnrichedRecord -> Observation (timestamped with its event time), and a
    DEAD_LETTERS output of DeadLetter for lines that do not parse or whose level
    contexts are all unusable. Lines without a level context are only counted."""

    OBSERVATIONS = "observations"
    DEAD_LETTERS = "dead_letters"

    def __init__(self, event_time_field: str = DEFAULT_EVENT_TIME_FIELD):
        super().__init__()
        self._event_time_field = event_time_field

    def expand(self, records):
        streaming = records.pipeline.options.view_as(StandardOptions).streaming
        parse = _ParseLineFn(self._event_time_field, count_per_bundle=records.is_bounded and not streaming)
        return records | "ParseLines" >> beam.ParDo(parse).with_outputs(
            self.DEAD_LETTERS, main=self.OBSERVATIONS
        )
