"""Objects in a directory or under s3://bucket/prefix, through Beam's FileSystems (so the
same code writes locally, to S3, or to any filesystem Beam knows).

Reads and writes wait out throttling (S3's 503 SlowDown) and a missing AWS with backoff
(pipeline.aws), then fail loudly; a read checks it got the whole object (a reply cut
short can read as a shorter one). A rewrite is harmless: every object the pipeline
writes is a function of what it describes (same name, same bytes), and a write whose
reply was lost is simply made again. A local object is written under a hidden partial
name and renamed into place, so a reader (the dashboard, a test) never reads half of
one; an S3 object appears whole by itself. Retries count in the `object_retries` metric
(within a DoFn; the run's status thread writes outside of one and is not counted).
"""

import os
import uuid

from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from pipeline.aws import RETRY_FOR_SECS, IncompleteReply, call_with_retries
from pipeline.runtime import metrics

_RETRIES = metrics.counter("object_retries")


def join_path(base: str, name: str) -> str:
    return FileSystems.join(base.rstrip("/"), name) if base else name


def write_object(path: str, body: bytes, retry_for_secs: float = RETRY_FOR_SECS) -> int:
    """Writes the object; returns how many retries it took."""
    retries = put_object(path, body, retry_for_secs)
    count_retries(retries)
    return retries


def put_object(path: str, body: bytes, retry_for_secs: float = RETRY_FOR_SECS) -> int:
    """write_object without the metric, so it may run off the bundle's thread (Beam's
    metrics belong to the thread running the bundle); the caller counts the retries."""

    def write():
        if not isinstance(FileSystems.get_filesystem(path), LocalFileSystem):
            with FileSystems.create(path, mime_type="application/json") as handle:
                handle.write(body)
            return
        partial = partial_path(path)
        with FileSystems.create(partial, mime_type="application/json") as handle:
            handle.write(body)
        os.replace(partial, path)  # atomic: a reader sees the old object or the new one

    return call_with_retries(write, f"writing {path}", retry_for_secs)[1]


def partial_path(path: str) -> str:
    """Where a local object is written before it is renamed into place: hidden (a leading
    dot: snapshot_format.is_partial) and unique to this write."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.partial-{uuid.uuid4().hex}")


def count_retries(retries: int) -> None:
    _RETRIES.inc(retries)


def read_object(path: str, retry_for_secs: float = RETRY_FOR_SECS) -> bytes | None:
    """The object's bytes, or None when there is none."""

    def read():
        if not FileSystems.exists(path):
            return None
        size = FileSystems.get_filesystem(path).metadata(path).size_in_bytes
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            body = handle.read()
        if len(body) != size:  # a reply cut in its headers reads as a shorter object
            raise IncompleteReply(f"reading {path}: {len(body)} of its {size} bytes came")
        return body

    body, retries = call_with_retries(read, f"reading {path}", retry_for_secs)
    _RETRIES.inc(retries)
    return body
