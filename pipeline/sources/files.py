"""ReadEnrichedFiles: the bounded source, for replaying archived enriched events; and
ReadProgress, what a long replay shows on stderr while it reads.

Each file is cut into chunks of whole lines (about CHUNK_BYTES each), so that an engine
with several workers reads and parses them side by side: the chunks are spread by a
Reshuffle before they are read. Numbering the lines (a record's position is
"path:line") takes one pass over each uncompressed file that only counts newlines;
a compressed file cannot be read from the middle and stays one chunk.

Progress: an engine runs a bounded replay to its end before it answers anything (the
FnApiRunner's run() returns when the job is done, its metrics with it), and its
workers may be other processes. So the reader notes what it has read itself: after
each chunk, each worker process rewrites one small file in the directory named by
$LEVEL_ANALYTICS_PROGRESS_DIR (when set), and ReadProgress, started by pipeline.main,
adds them up every few seconds. A chunk is megabytes of lines: the notes cost
nothing measurable.
"""

import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Iterator, NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.rules.observations import EnrichedRecord
from pipeline.runtime import metrics

CHUNK_BYTES = 8 << 20
_BLOCK_BYTES = 1 << 20
PROGRESS_DIR_ENV = "LEVEL_ANALYTICS_PROGRESS_DIR"


class FileChunk(NamedTuple):
    path: str
    start: int  # byte offset of its first line
    end: int | None  # byte offset just after its last line; None: to the end of the file
    first_line: int  # the number of its first line in the file, from 1


def chunk_bounds(handle, chunk_bytes: int) -> Iterator[tuple[int, int | None, int]]:
    """(start, end, first line) of consecutive chunks of whole lines of an open binary
    file, each ending at the first line end at or after `chunk_bytes` from its start;
    the last runs to the end of the file (end None)."""
    start, first_line = 0, 1
    offset, lines = 0, 0  # bytes and line ends before `block`
    block = handle.read(_BLOCK_BYTES)
    while block:
        at = max(0, start + chunk_bytes - 1 - offset)
        while (newline := block.find(b"\n", at)) >= 0:
            end = offset + newline + 1
            yield start, end, first_line
            start, first_line = end, lines + block.count(b"\n", 0, newline + 1) + 1
            at = max(newline + 1, start + chunk_bytes - 1 - offset)
        lines += block.count(b"\n")
        offset += len(block)
        block = handle.read(_BLOCK_BYTES)
    if start < offset:
        yield start, None, first_line


def _is_compressed(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def chunks_of(metadata, chunk_bytes: int = CHUNK_BYTES) -> Iterator[FileChunk]:
    """The chunks of one matched file (fileio.FileMetadata)."""
    path = metadata.path
    if _is_compressed(path) or metadata.size_in_bytes <= chunk_bytes:
        yield FileChunk(path, 0, None, 1)
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for start, end, first_line in chunk_bounds(handle, chunk_bytes):
            yield FileChunk(path, start, end, first_line)


def _lines(chunk: FileChunk):
    """The chunk's lines, each with its line end (Beam's compressed files have readline
    but cannot be iterated)."""
    if chunk.start == 0 and chunk.end is None:  # a whole file, compressed or not
        with FileSystems.open(chunk.path) as handle:
            yield from iter(handle.readline, b"")
        return
    with FileSystems.open(chunk.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.seek(chunk.start)
        left = None if chunk.end is None else chunk.end - chunk.start
        for line in iter(handle.readline, b""):
            yield line
            if left is not None:
                left -= len(line)
                if left <= 0:
                    return


class _ProcessNotes:
    """What this worker process has read, noted in its file in the progress directory."""

    _lock = threading.Lock()
    _read: dict = {}  # progress directory (one per run) -> path -> [bytes, lines] read by this process

    @classmethod
    def chunk_read(cls, path: str, size: int, lines: int) -> None:
        directory = os.environ.get(PROGRESS_DIR_ENV)
        if not directory:
            return
        with cls._lock:
            read = cls._read.setdefault(directory, {})
            done = read.setdefault(path, [0, 0])
            done[0] += size
            done[1] += lines
            body = json.dumps(read)
            note = os.path.join(directory, f"{os.getpid()}.json")
            try:
                with open(note + ".tmp", "w") as handle:
                    handle.write(body)
                os.replace(note + ".tmp", note)
            except OSError:
                pass  # the directory went: the run that asked for notes is over


class _ReadChunkFn(beam.DoFn):
    """Each line of one chunk as raw bytes (decoding is the parser's job, so a non-UTF-8
    line becomes a dead letter instead of a crash), with its position "path:line"."""

    def __init__(self):
        self._chunks = metrics.counter("input_chunks_read")

    def process(self, chunk: FileChunk):
        number, size = chunk.first_line - 1, 0
        for number, line in enumerate(_lines(chunk), start=chunk.first_line):
            size += len(line)
            yield EnrichedRecord(f"{chunk.path}:{number}", line.rstrip(b"\r\n"))
        self._chunks.inc()
        _ProcessNotes.chunk_read(chunk.path, size, number - chunk.first_line + 1)


class ReadEnrichedFiles(beam.PTransform):
    """A glob of files of enriched TSV lines (local, s3://, gzip by extension) ->
    EnrichedRecord."""

    def __init__(self, file_pattern: str, chunk_bytes: int = CHUNK_BYTES):
        super().__init__()
        self._pattern = file_pattern
        self._chunk_bytes = chunk_bytes

    def expand(self, pipeline):
        return (
            pipeline
            | "MatchInputFiles" >> fileio.MatchFiles(self._pattern, empty_match_treatment="DISALLOW")
            | "SplitInputFiles" >> beam.FlatMap(chunks_of, self._chunk_bytes)
            # FileChunk: a file's lines from `start` to `end`
            | "SpreadChunks" >> beam.Reshuffle()
            | "ReadLines" >> beam.ParDo(_ReadChunkFn())
        )


class ReadProgress:
    """Shows a bounded replay's reading progress on stderr every `interval_secs`: files
    and lines read, bytes, lines/s and the time left to read, from the notes of every
    worker process (see the module docstring). Compressed files count by their size
    on disk, so their share of the bytes is an estimate until they are read."""

    def __init__(self, file_pattern: str, interval_secs: float = 10.0, out=None):
        matched = [m for result in FileSystems.match([file_pattern]) for m in result.metadata_list]
        self._sizes = {m.path: m.size_in_bytes for m in matched}
        self._interval_secs = interval_secs
        self._out = out or sys.stderr
        self._directory = tempfile.mkdtemp(prefix="level-analytics-progress-")
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="read-progress", daemon=True)

    def start(self) -> "ReadProgress":
        os.environ[PROGRESS_DIR_ENV] = self._directory  # worker processes started from now on see it
        atexit.register(shutil.rmtree, self._directory, True)  # also if the run fails before stop()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._report(final=True)
        os.environ.pop(PROGRESS_DIR_ENV, None)
        shutil.rmtree(self._directory, ignore_errors=True)

    def read_so_far(self) -> dict:
        """{path: [bytes, lines]} over every worker process's notes."""
        total = {}
        for name in os.listdir(self._directory):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self._directory, name)) as handle:
                    notes = json.load(handle)
            except (OSError, ValueError):
                continue  # being replaced just now: next time
            for path, (size, lines) in notes.items():
                done = total.setdefault(path, [0, 0])
                done[0] += size
                done[1] += lines
        return total

    def _loop(self):
        while not self._stop.wait(self._interval_secs):
            self._report()

    def _report(self, final: bool = False):
        read = self.read_so_far()
        total_bytes = sum(self._sizes.values())
        done_bytes = sum(min(size, self._sizes.get(path, size)) for path, (size, _) in read.items())
        lines = sum(n for _, n in read.values())
        files = sum(1 for path, (size, _) in read.items() if size >= self._sizes.get(path, 0))
        elapsed = max(time.monotonic() - self._started, 1e-9)
        line = (
            f"backfill: read {files} of {len(self._sizes)} files, {lines:,} lines "
            f"({100 * done_bytes / max(total_bytes, 1):.0f}% of {total_bytes / 1e6:,.1f} MB), "
            f"{lines / elapsed:,.0f} lines/s"
        )
        if final:
            line += f", in {elapsed:,.0f} s"
        elif 0 < done_bytes < total_bytes:
            line += f", reading done in about {(total_bytes - done_bytes) * elapsed / done_bytes:,.0f} s"
        print(line, file=self._out, flush=True)
