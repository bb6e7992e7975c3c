"""Thin readers of what the pipeline published: JSON objects under --snapshot_path (a
directory or s3://bucket/prefix), the level-state table, and the history objects, which
are immutable and so are read once and kept in memory."""

import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from botocore.exceptions import ClientError

from pipeline.apps.dashboard.model import (
    Transition,
    parse_window_end,
    transitions_of,
)
from pipeline.aws import ClientFactory, error_code
from pipeline.rules.snapshot_format import is_partial
from pipeline.rules.times import iso_utc

LEVELS_LATEST = "level_information.json"
TRANSITIONS_LATEST = "transition_information.json"
STATUS_OBJECT = "pipeline_status.json"
LEVELS_HISTORY = "history/levels"
TRANSITIONS_HISTORY = "history/transitions"


class Fetched(NamedTuple):
    value: dict
    etag: str
    modified_ms: int | None  # when it was written (S3 LastModified, file mtime)


NOT_MODIFIED = "not modified"  # get(..., etag) of an object that still has that etag


def _json_object(body: bytes) -> dict:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


class DirStore:
    """The snapshot objects in a local directory."""

    def __init__(self, root: str):
        self.root = root

    def get(self, name: str, etag: str | None = None) -> Fetched | str | None:
        """The object, NOT_MODIFIED when its etag is still `etag`, None when it is not there."""
        path = os.path.join(self.root, name)
        try:
            stat = os.stat(path)
            tag = f"{stat.st_mtime_ns}-{stat.st_size}"
            if tag == etag:
                return NOT_MODIFIED
            with open(path, "rb") as handle:
                body = handle.read()
        except FileNotFoundError:
            return None
        return Fetched(_json_object(body), tag, stat.st_mtime_ns // 1_000_000)

    def names(self, folder: str, start_after: str = "") -> Iterator[str]:
        """File names in a folder, sorted, those after `start_after` only."""
        try:
            entries = os.listdir(os.path.join(self.root, folder))
        except FileNotFoundError:
            return iter(())
        return iter(sorted(name for name in entries if name > start_after and not is_partial(name)))


class S3Store:
    """The snapshot objects under s3://bucket/prefix."""

    def __init__(self, client, bucket: str, prefix: str):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def get(self, name: str, etag: str | None = None) -> Fetched | str | None:
        extra = {"IfNoneMatch": etag} if etag else {}
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(name), **extra)
        except ClientError as error:
            code = error_code(error)
            if code in ("304", "NotModified"):
                return NOT_MODIFIED
            if code in ("NoSuchKey", "404"):
                return None
            raise
        body = response["Body"].read()
        modified = response.get("LastModified")
        modified_ms = None if modified is None else int(modified.timestamp() * 1000)
        return Fetched(_json_object(body), response.get("ETag", ""), modified_ms)

    def names(self, folder: str, start_after: str = "") -> Iterator[str]:
        base = self._key(folder) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base, StartAfter=base + start_after
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][len(base) :]


def make_clients(region: str, endpoint_url: str | None):
    """(s3, dynamodb) boto3 clients; short timeouts and few retries: the next poll retries."""
    quick = {
        "connect_timeout": 2,
        "read_timeout": 5,
        "retries": {"mode": "standard", "max_attempts": 2},
        "max_pool_connections": 24,  # the history readers (16) and the pollers
    }
    return ClientFactory("s3", region, endpoint_url, **quick)(), ClientFactory(
        "dynamodb", region, endpoint_url, **quick
    )()


def make_store(snapshot_path: str, s3_client) -> DirStore | S3Store:
    if snapshot_path.startswith("s3://"):
        bucket, _, prefix = snapshot_path[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {snapshot_path}")
        return S3Store(s3_client, bucket, prefix)
    return DirStore(snapshot_path)


class History:
    """The history objects, one pair per window. They are never rewritten with different
    content, so each is read once and kept; the list of windows is kept too and only
    extended (listing the keys after the newest known one)."""

    def __init__(self, store, workers: int = 8):
        self._store = store
        self._lock = threading.Lock()
        self._files: set[str] = set()  # history/levels file names known, "{window_end}.json"
        self._listed_from_ms: int | None = None  # every window after this instant is in _files
        self._levels: dict[str, dict] = {}
        self._transitions: dict[str, list[Transition]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="history")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def window_ends(self, after_ms: int) -> list[str]:
        """The window ends of history levels objects later than `after_ms`, oldest first."""
        with self._lock:
            if self._listed_from_ms is None or after_ms < self._listed_from_ms:
                oldest = min(self._files, default=None)
                for name in self._store.names(LEVELS_HISTORY, iso_utc(after_ms)):
                    if oldest is not None and name >= oldest:
                        break  # the rest was listed before
                    self._add(name)
                self._listed_from_ms = after_ms
            for name in self._store.names(LEVELS_HISTORY, max(self._files, default=iso_utc(after_ms))):
                self._add(name)
            ends = [(parse_window_end(name[: -len(".json")]), name[: -len(".json")]) for name in self._files]
        return [end for ms, end in sorted(ends) if ms > after_ms]

    def forget_before(self, ms: int) -> None:
        """Drops what is kept of the windows ending at or before `ms` (no span reaches them)."""
        with self._lock:
            for cache in (self._levels, self._transitions):
                for end in list(cache):  # list() of a dict: one step, safe beside other threads
                    if (parse_window_end(end) or 0) <= ms:
                        cache.pop(end, None)
            self._files = {
                name for name in self._files if (parse_window_end(name[: -len(".json")]) or 0) > ms
            }
            self._listed_from_ms = None if self._listed_from_ms is None else max(self._listed_from_ms, ms)

    def _add(self, name: str) -> None:
        if name.endswith(".json") and parse_window_end(name[: -len(".json")]) is not None:
            self._files.add(name)

    def levels(self, window_end: str) -> dict | None:
        """The history levels object of a window, None when it is not there."""
        if window_end not in self._levels:
            fetched = self._store.get(f"{LEVELS_HISTORY}/{window_end}.json")
            if fetched is None:
                return None
            self._levels[window_end] = fetched.value
        return self._levels[window_end]

    def transitions(self, window_end: str) -> list[Transition] | None:
        """The transitions of a window, None when its history object is not there."""
        if window_end not in self._transitions:
            fetched = self._store.get(f"{TRANSITIONS_HISTORY}/{window_end}.json")
            if fetched is None:
                return None
            self._transitions[window_end] = transitions_of(fetched.value)
        return self._transitions[window_end]

    def many_levels(self, window_ends: list[str]) -> list[tuple[str, dict]]:
        """(window_end, levels object) of those that are there, reading the unknown in parallel."""
        values = self._pool.map(self.levels, window_ends)
        return [(end, value) for end, value in zip(window_ends, values, strict=True) if value is not None]

    def many_transitions(self, window_ends: list[str]) -> list[tuple[str, list[Transition]]]:
        values = self._pool.map(self.transitions, window_ends)
        return [(end, value) for end, value in zip(window_ends, values, strict=True) if value is not None]
