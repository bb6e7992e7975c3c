"""Probes a bench child puts into the pipeline's own functions (this process only) to
see when each output was written and where the time went on its way:

- reads: for every record the Kinesis reader emits, when (wall clock) and its
  ApproximateArrivalTimestamp (how long it waited in the stream before being read);
- closes: each time the ledger closes instants, (until_ms, wall time, first instant
  closed, last instant closed): when the watermark reached the ledger;
- writes: every DynamoDB UpdateItem, (table, key, as_of_ms, started, ended, value);
- publishes: every snapshot written, (window_end_ms, started, ended).

The pipeline is unchanged: the probes wrap module functions the DoFns call by name,
which the runner's workers (in this process, with Prism and Flink's LOOPBACK) see.
"""

import threading
import time

_lock = threading.Lock()
log = {"reads": [], "closes": [], "writes": [], "publishes": []}


def _append(name, row):
    with _lock:
        log[name].append(row)


def install():
    from pipeline.sinks import dynamodb, snapshots
    from pipeline.sources import kinesis
    from pipeline.transforms import keep_ledger

    original_write = dynamodb.write_item

    def write_item(client, write, *args, **kwargs):
        started = time.time()
        outcome = original_write(client, write, *args, **kwargs)
        key = next(iter(next(iter(write.key.values())).values()))
        value = write.sets.get("count", write.sets.get("playerCount", {})).get("N")
        _append("writes", (write.table, key, write.as_of_ms, started, time.time(), value))
        return outcome

    dynamodb.write_item = write_item

    original_publish = snapshots.publish_snapshot

    def publish_snapshot(path, window_secs, snapshot, *args, **kwargs):
        started = time.time()
        puts = original_publish(path, window_secs, snapshot, *args, **kwargs)
        _append("publishes", (snapshot.window_end_ms, started, time.time()))
        return puts

    snapshots.publish_snapshot = publish_snapshot

    original_advance = keep_ledger.advance_ledger

    def advance_ledger(ledger, sums, until_ms, update_ms, window_ms):
        first = ledger.next_instant_ms
        step = original_advance(ledger, sums, until_ms, update_ms, window_ms)
        last = None if step.ledger.next_instant_ms is None else step.ledger.next_instant_ms - update_ms
        _append("closes", (until_ms, time.time(), first, last))
        return step

    keep_ledger.advance_ledger = advance_ledger

    original_output = kinesis._ReadShardsFn._output

    def output(self, position, data, event_ms, arrival_ms, bound_ms):
        _append("reads", (time.time(), arrival_ms))
        return original_output(self, position, data, event_ms, arrival_ms, bound_ms)

    kinesis._ReadShardsFn._output = output


def report() -> dict:
    """The logs, the per-record read delays reduced to their quantiles."""
    from bench.common import quantiles

    with _lock:
        reads = list(log["reads"])
        return {
            "read_delay_ms": quantiles([wall * 1000 - arrival for wall, arrival in reads]),
            "records_read": len(reads),
            "read_times": sorted(wall for wall, _ in reads),
            "closes": list(log["closes"]),
            "writes": list(log["writes"]),
            "publishes": list(log["publishes"]),
        }
