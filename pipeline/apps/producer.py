"""Putting enriched lines into a Kinesis stream the way a producer should: PutRecords
in batches within the service's limits, records a partial failure refused sent again
with backoff, then a loud failure. Used by the simulator, the tests and the benchmarks."""

import hashlib
import time

from pipeline.aws import backoff_delay_secs

PUT_RECORDS_MAX_RECORDS = 500  # the service's limits per PutRecords call
PUT_RECORDS_MAX_BYTES = 5 * 1024 * 1024


class PutRecordsError(RuntimeError):
    """Records the stream kept refusing after every retry."""


def partition_key(line: bytes) -> str:
    return hashlib.sha1(line).hexdigest()[:16]  # spreads lines over the shards, reproducibly


def put_batches(lines: list[bytes]):
    """Splits lines into PutRecords calls within the count and size limits."""
    batch, size = [], 0
    for line in lines:
        entry_size = len(line) + 16
        if batch and (len(batch) == PUT_RECORDS_MAX_RECORDS or size + entry_size > PUT_RECORDS_MAX_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += entry_size
    if batch:
        yield batch


def put_records(
    kinesis, stream_name: str, lines: list[bytes], max_attempts: int = 8, sleep=time.sleep
) -> list:
    """PutRecords in batches within the limits; records a partial failure refused
    (throttling) are sent again, with exponential backoff and full jitter, until all are
    in or `max_attempts` is reached (then PutRecordsError). Returns, in order, the wall
    time each record was accepted."""
    accepted = [0.0] * len(lines)
    start = 0
    for batch in put_batches(lines):
        waiting = list(range(start, start + len(batch)))
        start += len(batch)
        for attempt in range(max_attempts):
            answer = kinesis.put_records(
                StreamName=stream_name,
                Records=[{"Data": lines[i], "PartitionKey": partition_key(lines[i])} for i in waiting],
            )
            now = time.time()
            refused = []
            for i, result in zip(waiting, answer["Records"], strict=True):
                if "ErrorCode" in result:
                    refused.append(i)
                else:
                    accepted[i] = now
            waiting = refused
            if not waiting:
                break
            sleep(backoff_delay_secs(attempt, 0.1, 5.0))
        else:
            raise PutRecordsError(
                f"{len(waiting)} records still refused by stream {stream_name!r} after {max_attempts} attempts"
            )
    return accepted
