"""WriteSnapshots: each window's snapshot to files or S3, in the original app's layout.

{path}/level_information.json             latest completed window
{path}/transition_information.json
{path}/history/levels/{window_end}.json   one object per window, never changed
{path}/history/transitions/{window_end}.json
"""

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam

from pipeline.aws import ClientFactory
from pipeline.rules.snapshot_format import (
    LEVELS_LATEST,
    TRANSITIONS_LATEST,
    history_names,
    level_information,
    to_json_bytes,
    transition_information,
)
from pipeline.rules.times import parse_iso_ms
from pipeline.runtime import metrics
from pipeline.sinks.objects import count_retries, join_path, put_object, read_object, write_object

_LOG = logging.getLogger(__name__)


def publish_snapshot(snapshot_path: str, window_secs: int, snapshot, s3: ClientFactory | None = None) -> int:
    """Writes the objects of one snapshot (S3 ones with `s3`'s client); returns how many
    were put.

    A retry is harmless: every object's bytes are a function of the window alone
    (deterministic JSON, update_id derived from the window), so rewriting one writes
    the same bytes. The "latest" objects are only replaced by a window that is not
    older, so a replayed old window never moves them back in time.

    The two history objects are written side by side while the current latest is read
    (each a few S3 calls: one after another they took most of the time from a window's
    end to its objects); the latest pair only after them, the levels object last, so
    readers that poll it see a complete pair whose history is there.
    """
    levels_history, transitions_history = history_names(snapshot.window_end_ms)
    history = [
        (levels_history, level_information(snapshot, window_secs, history=True)),
        (transitions_history, transition_information(snapshot, window_secs, history=True)),
    ]
    with ThreadPoolExecutor(len(history)) as pool:
        writing = [
            pool.submit(put_object, join_path(snapshot_path, name), to_json_bytes(body), s3)
            for name, body in history
        ]
        not_older = _is_not_older_than_latest(snapshot_path, snapshot.window_end_ms, s3)
        count_retries(sum(write.result() for write in writing))
    if not not_older:
        return len(history)
    write_object(
        join_path(snapshot_path, TRANSITIONS_LATEST),
        to_json_bytes(transition_information(snapshot, window_secs)),
        s3,
    )
    write_object(
        join_path(snapshot_path, LEVELS_LATEST), to_json_bytes(level_information(snapshot, window_secs)), s3
    )
    return len(history) + 2


def _is_not_older_than_latest(snapshot_path: str, window_end_ms: int, s3: ClientFactory | None) -> bool:
    current = read_object(join_path(snapshot_path, LEVELS_LATEST), s3)
    if current is None:
        return True
    try:
        latest_ms = parse_iso_ms(json.loads(current)["update_time"])
    except (ValueError, KeyError, TypeError):
        latest_ms = None
    if latest_ms is None:
        _LOG.warning("unreadable %s; replacing it", LEVELS_LATEST)
        return True
    return window_end_ms >= latest_ms


class _WriteSnapshotFn(beam.DoFn):
    def __init__(self, snapshot_path: str, window_secs: int, s3: ClientFactory | None):
        self._path = snapshot_path
        self._window_secs = window_secs
        self._s3 = s3
        self._puts = metrics.counter("snapshot_objects_written")

    def process(self, snapshot):
        self._puts.inc(publish_snapshot(self._path, self._window_secs, snapshot, self._s3))
        yield snapshot.window_end_ms


class WriteSnapshots(beam.PTransform):
    """Snapshot -> its objects; returns the window end (ms) of each window published."""

    def __init__(self, snapshot_path: str, window_secs: int, s3: ClientFactory | None = None):
        super().__init__()
        self._path = snapshot_path
        self._window_secs = window_secs
        self._s3 = s3

    def expand(self, snapshots):
        return snapshots | "WriteSnapshotObjects" >> beam.ParDo(
            _WriteSnapshotFn(self._path, self._window_secs, self._s3)
        )
