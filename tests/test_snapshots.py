"""Publishing a window's snapshot (pipeline.sinks.snapshots): its history pair always,
the latest pair only when the window is not older than the latest, and in an order a
polling reader can trust: the history first, then transitions, the levels object last."""

import json
import os
import threading

import pytest

from pipeline.aws import AwsCallFailed
from pipeline.rules.snapshot_format import (
    LEVELS_LATEST,
    TRANSITIONS_LATEST,
    Snapshot,
    history_names,
    is_partial,
    level_information,
    to_json_bytes,
    transition_information,
)
from pipeline.rules.times import iso_utc
from pipeline.sinks import objects, snapshots
from pipeline.testing.outputs import read_history

WINDOW_SECS = 10
T0 = 1_795_000_000_000


def window(end_ms: int, players: int) -> Snapshot:
    return Snapshot(
        end_ms - 10_000, end_ms, (("kithgard-gates", players),), (("(enter)/kithgard-gates", players),)
    )


def read(root, name) -> bytes:
    return (root / name).read_bytes()


def test_a_window_writes_its_history_pair_and_the_latest_pair(tmp_path):
    newest = window(T0 + 20_000, 3)
    assert snapshots.publish_snapshot(str(tmp_path), WINDOW_SECS, newest) == 4
    levels_history, transitions_history = history_names(newest.window_end_ms)
    assert read(tmp_path, levels_history) == to_json_bytes(
        level_information(newest, WINDOW_SECS, history=True)
    )
    assert read(tmp_path, transitions_history) == to_json_bytes(
        transition_information(newest, WINDOW_SECS, history=True)
    )
    assert read(tmp_path, LEVELS_LATEST) == to_json_bytes(level_information(newest, WINDOW_SECS))
    assert read(tmp_path, TRANSITIONS_LATEST) == to_json_bytes(transition_information(newest, WINDOW_SECS))


def test_an_older_window_published_later_writes_its_history_but_never_moves_the_latest_back(tmp_path):
    snapshots.publish_snapshot(str(tmp_path), WINDOW_SECS, window(T0 + 20_000, 3))
    latest = read(tmp_path, LEVELS_LATEST), read(tmp_path, TRANSITIONS_LATEST)
    older = window(T0 + 10_000, 5)
    assert snapshots.publish_snapshot(str(tmp_path), WINDOW_SECS, older) == 2
    assert (read(tmp_path, LEVELS_LATEST), read(tmp_path, TRANSITIONS_LATEST)) == latest
    assert json.loads(read(tmp_path, history_names(older.window_end_ms)[0]))["level_player_counts"]


@pytest.mark.parametrize("found", [b"not json", b'{"other": 1}', b'{"update_time": "2026-11-27"}'])
def test_a_latest_object_that_cannot_be_read_is_replaced(tmp_path, found):
    (tmp_path / LEVELS_LATEST).write_bytes(found)
    newest = window(T0 + 20_000, 3)
    assert snapshots.publish_snapshot(str(tmp_path), WINDOW_SECS, newest) == 4
    assert read(tmp_path, LEVELS_LATEST) == to_json_bytes(level_information(newest, WINDOW_SECS))


def test_the_history_is_written_before_the_latest_pair_and_the_levels_object_last(tmp_path, monkeypatch):
    finished, lock = [], threading.Lock()
    put = objects.put_object

    def recording_put(path, body, *args):
        retries = put(path, body, *args)
        with lock:
            finished.append(path.rsplit("/", 1)[-1])
        return retries

    monkeypatch.setattr(snapshots, "put_object", recording_put)
    monkeypatch.setattr(objects, "put_object", recording_put)  # write_object's
    snapshots.publish_snapshot(str(tmp_path), WINDOW_SECS, window(T0 + 20_000, 3))
    names = [name.rsplit("/", 1)[-1] for name in history_names(T0 + 20_000)]
    assert sorted(finished[:2]) == sorted(names)
    assert finished[2:] == [TRANSITIONS_LATEST, LEVELS_LATEST]


def test_a_local_object_is_renamed_into_place_whole_so_a_reader_never_sees_half_of_it(tmp_path, monkeypatch):
    target = tmp_path / LEVELS_LATEST
    target.write_bytes(b'{"old": true}\n')
    seen_while_writing = []
    replace = objects.os.replace

    def replace_and_look(source, destination):
        # Just before the new object takes the name: the reader still gets the old one
        # whole, and the new one sits complete under a hidden name readers skip.
        seen_while_writing.append((target.read_bytes(), open(source, "rb").read(), os.path.basename(source)))
        replace(source, destination)

    monkeypatch.setattr(objects.os, "replace", replace_and_look)
    objects.write_object(str(target), b'{"new": true}\n')
    [(old, new, partial_name)] = seen_while_writing
    assert (old, new) == (b'{"old": true}\n', b'{"new": true}\n')
    assert is_partial(partial_name) and not is_partial(LEVELS_LATEST)
    assert target.read_bytes() == b'{"new": true}\n'
    assert os.listdir(tmp_path) == [LEVELS_LATEST]


def test_a_local_write_that_fails_leaves_no_partial_object_behind(tmp_path, monkeypatch):
    target = tmp_path / LEVELS_LATEST
    target.write_bytes(b'{"old": true}\n')

    def disk_full(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(objects.os, "replace", disk_full)
    with pytest.raises(AwsCallFailed, match="No space left"):
        objects.write_object(str(target), b'{"new": true}\n', retry_for_secs=0.5)  # several tries
    assert os.listdir(tmp_path) == [LEVELS_LATEST]
    assert target.read_bytes() == b'{"old": true}\n'


def test_a_history_window_read_with_one_document_alone_is_a_mismatch_not_a_crash(tmp_path):
    snapshots.publish_snapshot(str(tmp_path), WINDOW_SECS, window(T0 + 20_000, 3))
    assert list(read_history(str(tmp_path))) == [iso_utc(T0 + 20_000)]
    (tmp_path / history_names(T0 + 20_000)[1]).unlink()  # as a poller can find it mid-write
    with pytest.raises(AssertionError, match="one of their two documents"):
        read_history(str(tmp_path))
