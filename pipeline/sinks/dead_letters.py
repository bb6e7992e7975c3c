"""WriteDeadLetters: bad records as JSON lines, one object per window.

    {path}/{window_end}.jsonl   the dead letters whose timestamp falls in the window
    {path}/undated.jsonl        bounded input only: lines that never got an event time

A record's timestamp is its event time, or, for a line without a readable one, its
arrival time in the stream. Each object is written once its window is complete (the
watermark passed its end), with its lines sorted, so writing a window again (a retried
bundle, a replay after a restart) writes the same bytes under the same name.

`final_before` (frontiers of a segment run, see pipeline.main) and `after_ms` (the
checkpoint a restarted run resumes from) limit the windows written to those this run
owns: ending after the checkpoint (earlier ones were written before the restart) and
no later than the frontier (later ones are not complete yet; the next run writes them).
"""

from typing import Optional

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.typehints import KV
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from pipeline import metrics
from pipeline.sinks.snapshots import join_path, write_object
from pipeline.snapshots import iso_utc, window_start

UNDATED = "undated"


def object_name(window_end_ms: int | None) -> str:
    return f"{UNDATED}.jsonl" if window_end_ms is None else f"{iso_utc(window_end_ms)}.jsonl"


def owned_by_this_run(window_end_ms: int | None, after_ms: int | None, final_before_ms: int | None) -> bool:
    if window_end_ms is None:
        return True
    if after_ms is not None and window_end_ms <= after_ms:
        return False
    return final_before_ms is None or window_end_ms <= final_before_ms


class _KeyByObjectFn(beam.DoFn):
    """DeadLetter -> (window end ms or None, JSON line), re-timestamped at its event time
    when it has one, so a bounded input windows it like a stream does."""

    def __init__(self, window_ms: int):
        self._window_ms = window_ms

    def process(self, letter, timestamp=beam.DoFn.TimestampParam):
        if letter.event_time_ms is not None:
            time_ms = letter.event_time_ms
        elif MIN_TIMESTAMP < timestamp < MAX_TIMESTAMP:
            time_ms = timestamp.micros // 1000  # arrival time, given by the stream source
        else:
            yield (None, letter.to_json())  # a file line with no usable time
            return
        end_ms = window_start(time_ms, self._window_ms) + self._window_ms
        yield window.TimestampedValue((end_ms, letter.to_json()), Timestamp(micros=time_ms * 1000))


class _WriteObjectFn(beam.DoFn):
    def __init__(self, path: str, after_ms: int | None):
        self._path = path
        self._after_ms = after_ms
        self._written = metrics.counter("dead_letters_written")
        self._objects = metrics.counter("dead_letter_objects_written")

    def process(self, element, frontiers=None):
        window_end_ms, lines = element
        final_before_ms = None
        if frontiers is not None:
            if not frontiers:
                return  # a segment whose readers made nothing final
            final_before_ms = min(frontiers)
        if not owned_by_this_run(window_end_ms, self._after_ms, final_before_ms):
            return
        lines = sorted(lines)
        body = ("\n".join(lines) + "\n").encode("utf-8")
        write_object(join_path(self._path, object_name(window_end_ms)), body)
        self._written.inc(len(lines))
        self._objects.inc()


class WriteDeadLetters(beam.PTransform):
    def __init__(self, path: str, window_secs: int, after_ms: int | None = None, final_before=None):
        super().__init__()
        self._path = path
        self._window_secs = window_secs
        self._after_ms = after_ms
        self._final_before = final_before  # PCollection of frontier ms, or None

    def expand(self, dead_letters):
        side = () if self._final_before is None else (beam.pvalue.AsList(self._final_before),)
        keyed = dead_letters | "KeyByObject" >> beam.ParDo(
            _KeyByObjectFn(int(self._window_secs * 1000))
        ).with_output_types(KV[Optional[int], str])  # noqa: UP045 - a Beam type hint
        if not dead_letters.is_bounded:
            # A stream: group per window, written when the watermark passes its end.
            keyed = keyed | "IntoWindows" >> beam.WindowInto(window.FixedWindows(self._window_secs))
        return (
            keyed
            | "GroupPerObject" >> beam.GroupByKey()
            | "WriteDeadLetterObjects" >> beam.ParDo(_WriteObjectFn(self._path, self._after_ms), *side)
        )
