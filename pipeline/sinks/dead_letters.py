"""WriteDeadLetters: bad records as JSON lines under --dead_letter_path.

    {path}/{window_end}/{content_hash}.jsonl   records whose event time is known
    {path}/undated/{content_hash}.jsonl        lines that never got an event time

No GroupByKey: a late record must not be dropped by a closed window, so records are
written per bundle. An object's name is a hash of its sorted content, so writing the
same records again writes the same object.
"""

import hashlib

import apache_beam as beam

from pipeline import metrics
from pipeline.sinks.snapshots import join_path, write_object
from pipeline.snapshots import iso_utc, window_start


class _WriteDeadLettersFn(beam.DoFn):
    def __init__(self, path: str, window_secs: int, max_batch: int = 5000):
        self._path = path
        self._window_ms = int(window_secs * 1000)
        self._max_batch = max_batch
        self._written = metrics.counter("dead_letters_written")

    def start_bundle(self):
        self._batch = {}
        self._size = 0

    def process(self, dead_letter):
        if dead_letter.event_time_ms is None:
            folder = "undated"
        else:
            folder = iso_utc(window_start(dead_letter.event_time_ms, self._window_ms) + self._window_ms)
        self._batch.setdefault(folder, []).append(dead_letter.to_json())
        self._size += 1
        if self._size >= self._max_batch:
            self._flush()

    def finish_bundle(self):
        self._flush()

    def _flush(self):
        for folder, lines in self._batch.items():
            body = ("\n".join(sorted(lines)) + "\n").encode("utf-8")
            name = hashlib.sha256(body).hexdigest()[:24] + ".jsonl"
            write_object(join_path(self._path, f"{folder}/{name}"), body)
            self._written.inc(len(lines))
        self._batch, self._size = {}, 0


class WriteDeadLetters(beam.PTransform):
    def __init__(self, path: str, window_secs: int):
        super().__init__()
        self._path = path
        self._window_secs = window_secs

    def expand(self, dead_letters):
        return dead_letters | "WriteDeadLetterObjects" >> beam.ParDo(
            _WriteDeadLettersFn(self._path, self._window_secs)
        )
