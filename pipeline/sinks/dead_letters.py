"""WriteDeadLetters: bad records as JSON lines, one object per window.

    {path}/{window_end}.jsonl   the dead letters whose timestamp falls in the window
    {path}/undated.jsonl        bounded input only: lines that never got an event time

A dead letter's window is that of its timestamp, as its source gave it: in a stream,
the record's event time, or for a record without a readable one its arrival time, or
for a late record the instant it missed (pipeline.sources.kinesis); a file line has no
timestamp and is placed by its own event time, or in `undated.jsonl` when it has none.
Each object is written once its window is complete (the watermark passed its end),
while the pipeline runs, with its lines sorted, so writing a window again (a retried
bundle, a replay after a restart) writes the same bytes under the same name.

`after_ms` (the checkpoint a restarted run resumes from) limits the windows written to
those this run owns: the windows ending up to the checkpoint were written before it
(the checkpoint is committed only after them, see pipeline.sinks.commit).
"""

from typing import Optional

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.typehints import KV
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from pipeline.aws import ClientFactory
from pipeline.rules.times import iso_utc, window_start
from pipeline.runtime import metrics
from pipeline.runtime.timestamps import ms_to_timestamp
from pipeline.sinks.objects import join_path, write_object

UNDATED = "undated"


def object_name(window_end_ms: int | None) -> str:
    return f"{UNDATED}.jsonl" if window_end_ms is None else f"{iso_utc(window_end_ms)}.jsonl"


def owned_by_this_run(window_end_ms: int | None, after_ms: int | None) -> bool:
    return window_end_ms is None or after_ms is None or window_end_ms > after_ms


def placed_at_ms(letter, timestamp: Timestamp) -> int | None:
    """The instant that decides a dead letter's object: its timestamp from the source,
    else (a file line) its own event time; None when it has neither."""
    if MIN_TIMESTAMP < timestamp < MAX_TIMESTAMP:
        return timestamp.micros // 1000
    return letter.event_time_ms


class _KeyByObjectFn(beam.DoFn):
    """DeadLetter -> (window end ms or None, JSON line), timestamped at the instant that
    places it, so a bounded input windows it like a stream does."""

    def __init__(self, window_ms: int):
        self._window_ms = window_ms

    def process(self, letter, timestamp=beam.DoFn.TimestampParam):
        time_ms = placed_at_ms(letter, timestamp)
        if time_ms is None:
            keyed = (None, letter.to_json())  # a file line with no usable time
        else:
            end_ms = window_start(time_ms, self._window_ms) + self._window_ms
            keyed = window.TimestampedValue((end_ms, letter.to_json()), ms_to_timestamp(time_ms))
        yield keyed


class _WriteObjectFn(beam.DoFn):
    def __init__(self, path: str, after_ms: int | None, s3: ClientFactory | None):
        self._path = path
        self._after_ms = after_ms
        self._s3 = s3
        self._written = metrics.counter("dead_letters_written")
        self._objects = metrics.counter("dead_letter_objects_written")

    def process(self, element):
        window_end_ms, lines = element
        if owned_by_this_run(window_end_ms, self._after_ms):
            lines = sorted(lines)
            body = ("\n".join(lines) + "\n").encode("utf-8")
            write_object(join_path(self._path, object_name(window_end_ms)), body, self._s3)
            self._written.inc(len(lines))
            self._objects.inc()
        yield window_end_ms


class WriteDeadLetters(beam.PTransform):
    """DeadLetter -> one object per window; returns the window end (ms, or None for
    `undated`) of each object, timestamped at its window's last microsecond."""

    def __init__(
        self, path: str, window_secs: int, after_ms: int | None = None, s3: ClientFactory | None = None
    ):
        super().__init__()
        self._path = path
        self._window_secs = window_secs
        self._after_ms = after_ms
        self._s3 = s3

    def expand(self, dead_letters):
        return (
            dead_letters
            | "KeyByObject"
            >> beam.ParDo(_KeyByObjectFn(int(self._window_secs * 1000))).with_output_types(
                KV[Optional[int], str]  # noqa: UP045 - a Beam type hint
            )
            # Grouped per window, written when the watermark passes its end: as the
            # stream goes, and all at the end of a bounded input.
            | "IntoWindows" >> beam.WindowInto(window.FixedWindows(self._window_secs))
            | "GroupPerObject" >> beam.GroupByKey()
            | "WriteDeadLetterObjects" >> beam.ParDo(_WriteObjectFn(self._path, self._after_ms, self._s3))
        )
