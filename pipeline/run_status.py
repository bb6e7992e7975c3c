"""pipeline_status.json: what one run (or one segment of a live run) did, from its
Beam metrics, published next to the snapshots for the live view and for people.

    {"run_started", "run_finished", "committed_until", "records_read", "observations",
     "transitions", "dead_letters": {reason: n}, "dynamodb_writes", "dynamodb_retries",
     "dynamodb_rejected_repeats", "s3_puts"}
"""

import json

from apache_beam.metrics.metric import MetricsFilter

from pipeline import metrics
from pipeline.snapshots import STATUS_OBJECT, iso_utc

__all__ = ["STATUS_OBJECT", "counter_totals", "run_status", "status_bytes"]
_DEAD_LETTER_PREFIX = "dead_letters_"  # per reason, from the parser
_LATE = ("late_observations", "kinesis_late_records")


def counter_totals(result) -> dict:
    """Committed (or, where the runner has none, attempted) counter values by name."""
    totals = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals


def run_status(totals: dict, started_ms: int, finished_ms: int, committed_ms: int | None) -> dict:
    dead_letters = {
        name[len(_DEAD_LETTER_PREFIX) :]: n
        for name, n in totals.items()
        if name.startswith(_DEAD_LETTER_PREFIX) and name != "dead_letters_written" and n
    }
    late = sum(totals.get(name, 0) for name in _LATE)
    if late:
        dead_letters["late"] = late
    return {
        "run_started": iso_utc(started_ms),
        "run_finished": iso_utc(finished_ms),
        "committed_until": None if committed_ms is None else iso_utc(committed_ms),
        "records_read": totals.get("lines_read", 0),
        "observations": totals.get("observations", 0),
        "transitions": totals.get("transitions", 0),
        "dead_letters": dict(sorted(dead_letters.items())),
        "dynamodb_writes": totals.get("dynamodb_writes", 0),
        "dynamodb_retries": totals.get("dynamodb_retries", 0),
        "dynamodb_rejected_repeats": totals.get("dynamodb_rejected_repeats", 0),
        "s3_puts": totals.get("snapshot_objects_written", 0) + totals.get("dead_letter_objects_written", 0),
    }


def status_bytes(status: dict) -> bytes:
    return (json.dumps(status, sort_keys=True, indent=1) + "\n").encode("utf-8")
