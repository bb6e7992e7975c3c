"""Objects in a directory or under s3://bucket/prefix (any other filesystem Beam knows
goes through Beam's FileSystems).

An S3 object is one PutObject or GetObject through one boto3 client per process
(`s3`, a ClientFactory). Beam's S3 filesystem makes a new client for every call and
writes even a small object as a multipart upload (three calls): measured on moto, 245 ms
to write a 20 kB object and 783 ms to read it, against 12.5 ms and 8.7 ms; a window's
objects are on the path from its end to the dashboard.

Reads and writes wait out throttling (S3's 503 SlowDown) and a missing AWS with backoff
(pipeline.aws), then fail loudly; a read checks it got the whole object (a reply cut
short can read as a shorter one). A rewrite is harmless: every object the pipeline
writes is a function of what it describes (same name, same bytes), and a write whose
reply was lost is simply made again. A local object is written under a hidden partial
name and renamed into place, so a reader (the dashboard, a test) never reads half of
one; an S3 object appears whole by itself. Retries count in the `object_retries` metric
(within a DoFn; the run's status thread writes outside of one and is not counted).
"""

import contextlib
import os
import uuid

from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from botocore.exceptions import ClientError

from pipeline.aws import RETRY_FOR_SECS, ClientFactory, IncompleteReply, call_with_retries, error_code
from pipeline.runtime import metrics

_RETRIES = metrics.counter("object_retries")
_ANY_S3 = ClientFactory("s3", None)  # boto3's own region and endpoint, for callers that give none
_NOT_THERE = frozenset({"NoSuchKey", "404"})


def join_path(base: str, name: str) -> str:
    return FileSystems.join(base.rstrip("/"), name) if base else name


def split_s3_path(path: str) -> tuple[str, str] | None:
    """(bucket, key) of an s3:// path, None for any other."""
    if not path.startswith("s3://"):
        return None
    bucket, _, key = path[len("s3://") :].partition("/")
    return bucket, key


def write_object(
    path: str, body: bytes, s3: ClientFactory | None = None, retry_for_secs=RETRY_FOR_SECS
) -> int:
    """Writes the object; returns how many retries it took."""
    retries = put_object(path, body, s3, retry_for_secs)
    count_retries(retries)
    return retries


def put_object(path: str, body: bytes, s3: ClientFactory | None = None, retry_for_secs=RETRY_FOR_SECS) -> int:
    """write_object without the metric, so it may run off the bundle's thread (Beam's
    metrics belong to the thread running the bundle); the caller counts the retries."""
    s3_path = split_s3_path(path)

    def write():
        if s3_path is not None:
            bucket, key = s3_path
            (s3 or _ANY_S3).shared().put_object(
                Bucket=bucket, Key=key, Body=body, ContentType="application/json"
            )
        elif isinstance(FileSystems.get_filesystem(path), LocalFileSystem):
            partial = partial_path(path)
            try:
                with FileSystems.create(partial, mime_type="application/json") as handle:
                    handle.write(body)
                os.replace(partial, path)  # atomic: a reader sees the old object or the new one
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(partial)  # the next try writes a partial of its own
                raise
        else:
            with FileSystems.create(path, mime_type="application/json") as handle:
                handle.write(body)

    return call_with_retries(write, f"writing {path}", retry_for_secs)[1]


def partial_path(path: str) -> str:
    """Where a local object is written before it is renamed into place: hidden (a leading
    dot: snapshot_format.is_partial) and unique to this write."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.partial-{uuid.uuid4().hex}")


def count_retries(retries: int) -> None:
    _RETRIES.inc(retries)


def read_object(path: str, s3: ClientFactory | None = None, retry_for_secs=RETRY_FOR_SECS) -> bytes | None:
    """The object's bytes, or None when there is none."""
    s3_path = split_s3_path(path)

    def read_s3():
        bucket, key = s3_path
        try:
            response = (s3 or _ANY_S3).shared().get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error_code(error) in _NOT_THERE:
                return None
            raise
        return _whole(path, response["Body"].read(), response.get("ContentLength"))

    def read_file():
        if not FileSystems.exists(path):
            return None
        size = FileSystems.get_filesystem(path).metadata(path).size_in_bytes
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return _whole(path, handle.read(), size)

    body, retries = call_with_retries(
        read_file if s3_path is None else read_s3, f"reading {path}", retry_for_secs
    )
    _RETRIES.inc(retries)
    return body


def _whole(path: str, body: bytes, size: int | None) -> bytes:
    if size is not None and len(body) != size:  # a reply cut short can read as a shorter object
        raise IncompleteReply(f"reading {path}: {len(body)} of its {size} bytes came")
    return body
