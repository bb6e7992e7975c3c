"""Bounded replays (backfills): files cut into chunks of whole lines, read side by side,
each line once with its position; and the progress a replay shows while it reads."""

import gzip
import io
import os
import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline.main import run
from pipeline.rules.observations import EnrichedRecord
from pipeline.sources import files
from pipeline.sources.files import PROGRESS_DIR_ENV, ReadEnrichedFiles, ReadProgress, chunk_bounds


def lines_of(data: bytes) -> list:
    return list(enumerate(io.BytesIO(data), start=1))


@pytest.mark.parametrize("seed", range(5))
def test_chunks_hold_every_line_once_with_its_number(seed, monkeypatch):
    rng = random.Random(seed)
    for _ in range(400):
        monkeypatch.setattr(files, "_BLOCK_BYTES", rng.choice([1, 2, 3, 7, 64]))
        lines = [b"x" * rng.randrange(0, 12) for _ in range(rng.randrange(0, 30))]
        data = b"\n".join(lines) + rng.choice([b"", b"\n", b"\r\n"])
        chunk_bytes = rng.randrange(1, 40)
        got, position = [], 0
        for start, end, first_line in chunk_bounds(io.BytesIO(data), chunk_bytes):
            assert start == position
            piece = data[start:end]
            assert end is None or (len(piece) >= chunk_bytes and piece.endswith(b"\n"))
            got += [(first_line + i, line) for i, line in enumerate(io.BytesIO(piece))]
            position = len(data) if end is None else end
        assert position == len(data)
        assert got == lines_of(data)


def write(path, lines, compress=False):
    data = b"".join(line + b"\n" for line in lines)
    with (gzip.open if compress else open)(path, "wb") as handle:
        handle.write(data)


def test_the_source_reads_every_line_of_every_file_once_whatever_the_chunks(tmp_path):
    rng = random.Random(1)
    expected = []
    for name, compress in (("a.tsv", False), ("b.tsv", False), ("c.tsv.gz", True)):
        lines = [f"{name}\t{i}\t{'y' * rng.randrange(0, 80)}".encode() for i in range(500)]
        lines[7] = b"\xff not utf-8"  # raw bytes: decoding is the parser's job
        lines[8] = lines[8] + b"\r"  # a Windows line end is not part of the record
        write(tmp_path / name, lines, compress)
        expected += [
            EnrichedRecord(f"{tmp_path / name}:{i}", line.rstrip(b"\r")) for i, line in enumerate(lines, 1)
        ]
    pipeline = beam.Pipeline(runner="FnApiRunner")
    records = pipeline | ReadEnrichedFiles(str(tmp_path / "*"), chunk_bytes=1000)
    assert_that(records, equal_to(expected))
    pipeline.run().wait_until_finish()


def test_progress_adds_up_the_notes_of_every_worker_process(tmp_path, monkeypatch):
    write(tmp_path / "a.tsv", [b"x" * 99] * 10)  # 1,000 bytes
    write(tmp_path / "b.tsv", [b"y" * 99] * 30)  # 3,000 bytes
    out = io.StringIO()
    progress = ReadProgress(str(tmp_path / "*.tsv"), interval_secs=3600, out=out).start()
    try:
        directory = os.environ[PROGRESS_DIR_ENV]
        files._ProcessNotes.chunk_read(str(tmp_path / "a.tsv"), 1000, 10)  # this process: all of a
        with open(os.path.join(directory, "99999.json"), "w") as other:  # another one: a third of b
            other.write(f'{{"{tmp_path / "b.tsv"}": [1000, 10]}}')
        assert progress.read_so_far() == {
            str(tmp_path / "a.tsv"): [1000, 10],
            str(tmp_path / "b.tsv"): [1000, 10],
        }
        progress._report()
        assert out.getvalue().startswith("backfill: read 1 of 2 files, 20 lines (50% of 0.0 MB), ")
        assert "reading done in about" in out.getvalue()
    finally:
        progress.stop()
    assert PROGRESS_DIR_ENV not in os.environ and not os.path.exists(directory)
    assert out.getvalue().splitlines()[-1].startswith("backfill: read 1 of 2 files, 20 lines")


def test_a_replay_shows_its_progress_on_stderr(tmp_path, capsys):
    from pipeline.apps.simulator import SimulationSettings, simulate, write_lines

    stream = simulate(SimulationSettings(seed=3, players=20, duration_secs=300))
    write_lines(str(tmp_path / "events.tsv"), stream.lines)
    run([f"--input={tmp_path}/events.tsv", f"--snapshot_path={tmp_path}/out", "--runner=FnApiRunner"])
    err = capsys.readouterr().err
    assert f"backfill: read 1 of 1 files, {len(stream.lines):,} lines (100% of " in err
