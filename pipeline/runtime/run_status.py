"""pipeline_status.json: what the running pipeline has done, from its Beam metrics,
rewritten every few seconds while it runs and once when it ends, next to the
snapshots, for the live view, the dashboard and people.

    {"status_time", "state", "engine", "run_started", "run_finished",
     "records_read", "observations", "transitions", "dead_letters": {reason: n},
     "dynamodb_writes", "dynamodb_retries", "dynamodb_rejected_repeats", "s3_puts",
     "watermark", "closed_until", "committed_until", "latest_arrival", "behind_latest_ms",
     "pipeline_records_per_sec", "stream_records_per_sec"}

Two rates, because they differ exactly when it matters: `pipeline_records_per_sec` is
how fast the pipeline read records over the last interval (wall clock);
`stream_records_per_sec` is how fast those same records had arrived in the stream
(records read over the span of their Kinesis arrival times). Caught up, both are the
stream's rate; catching up on a backlog, the first is higher. `watermark` is the
Kinesis reader's event-time watermark (the earliest of its shards'): now minus it is
the watermark's lag, the out-of-orderness plus how far the latest event time read is
behind now.
`closed_until` is the latest update instant the ledger closed (event time, on the
--update_secs grid, so up to that much behind the watermark): now minus it is the lag
of the counts.
While the runner reports none of the pipeline's metrics (Flink's 2.62 job server reports
them only when a job ends; any runner before its first bundle), they are read from
`other_totals` when given (on Flink, Flink's own REST API: pipeline.runtime.flink_metrics);
failing that, the figures made from them are null, "not reported", never 0.
"""

import json
import threading
import time
from typing import NamedTuple

from apache_beam.metrics.metric import MetricsFilter

from pipeline.rules.snapshot_format import STATUS_OBJECT
from pipeline.rules.times import iso_utc
from pipeline.runtime import metrics
from pipeline.runtime.beam_patches import fresh_metrics
from pipeline.sources.kinesis import FINISHED_WATERMARK_MS

__all__ = ["STATUS_OBJECT", "RunStatus", "metric_totals", "run_status", "status_bytes"]
_DEAD_LETTER_PREFIX = "dead_letters_"  # per reason, from the parser
_LATE = ("late_observations", "kinesis_late_records")
_ARRIVAL_GAUGES = "kinesis_latest_arrival_ms_"  # one per shard
_BEHIND_GAUGES = "kinesis_behind_ms_"
_WATERMARK_GAUGES = "kinesis_watermark_ms_"  # one per root shard: the reader's watermark
_COUNTS = (  # the status's figures that are metric totals
    "records_read",
    "observations",
    "transitions",
    "dead_letters",
    "dynamodb_writes",
    "dynamodb_retries",
    "dynamodb_rejected_repeats",
    "s3_puts",
)


def _value(result) -> int | None:
    """A metric's committed value, or its attempted one where the runner has none."""
    value = result.committed if result.committed is not None else result.attempted
    return getattr(value, "value", value)  # a gauge's result holds its value


def metric_totals(pipeline_result) -> dict:
    """Counter totals and gauge values of the pipeline's namespace, by name."""
    query = fresh_metrics(pipeline_result).query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    totals = {}
    for counter in query["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (_value(counter) or 0)
    for gauge in query["gauges"]:
        value = _value(gauge)
        if value is not None:
            name = gauge.key.metric.name
            totals[name] = max(totals.get(name, value), value)
    return totals


def _max_of(totals: dict, prefix: str) -> int | None:
    values = [value for name, value in totals.items() if name.startswith(prefix)]
    return max(values) if values else None


def _watermark_ms(totals: dict) -> int | None:
    """The earliest of the readers' watermarks, leaving out those that have finished."""
    values = [
        value
        for name, value in totals.items()
        if name.startswith(_WATERMARK_GAUGES) and value < FINISHED_WATERMARK_MS
    ]
    return min(values) if values else None


def _iso_or_none(ms) -> str | None:
    return None if ms is None else iso_utc(int(ms))


class Sample(NamedTuple):
    wall_ms: int
    records_read: int
    latest_arrival_ms: int | None


def _per_sec(records: int, span_ms: int | None) -> float | None:
    if span_ms is None or span_ms <= 0:
        return 0.0 if records == 0 else None
    return round(records * 1000 / span_ms, 1)


def run_status(totals: dict, now_ms: int, previous: Sample | None = None, **run) -> dict:
    """The status object from metric totals; rates against the previous sample.
    `run`: state, engine, run_started_ms, run_finished_ms, committed_ms (if read)."""
    dead_letters = {
        name[len(_DEAD_LETTER_PREFIX) :]: n
        for name, n in totals.items()
        if name.startswith(_DEAD_LETTER_PREFIX) and name != "dead_letters_written" and n
    }
    late = sum(totals.get(name, 0) for name in _LATE)
    if late:
        dead_letters["late"] = late
    records_read = totals.get("lines_read", 0)
    latest_arrival = _max_of(totals, _ARRIVAL_GAUGES)
    pipeline_rate = stream_rate = None
    if previous is not None and previous.records_read is not None and totals:
        read = records_read - previous.records_read
        pipeline_rate = _per_sec(read, now_ms - previous.wall_ms)
        if latest_arrival is not None:
            arrival_span = latest_arrival - (previous.latest_arrival_ms or latest_arrival)
            stream_rate = _per_sec(read, arrival_span if previous.latest_arrival_ms else None)
    committed = totals.get("committed_until_ms", run.get("committed_ms"))
    status = {
        "status_time": iso_utc(now_ms),
        "state": run.get("state"),
        "engine": run.get("engine"),
        "run_started": _iso_or_none(run.get("run_started_ms")),
        "run_finished": _iso_or_none(run.get("run_finished_ms")),
        "records_read": records_read,
        "observations": totals.get("observations", 0),
        "transitions": totals.get("transitions", 0),
        "dead_letters": dict(sorted(dead_letters.items())),
        "dynamodb_writes": totals.get("dynamodb_writes", 0),
        "dynamodb_retries": totals.get("dynamodb_retries", 0),
        "dynamodb_rejected_repeats": totals.get("dynamodb_rejected_repeats", 0),
        "s3_puts": totals.get("snapshot_objects_written", 0) + totals.get("dead_letter_objects_written", 0),
        "watermark": _iso_or_none(_watermark_ms(totals)),
        "closed_until": _iso_or_none(totals.get("ledger_closed_until_ms")),
        "committed_until": _iso_or_none(committed),
        "latest_arrival": _iso_or_none(latest_arrival),
        "behind_latest_ms": _max_of(totals, _BEHIND_GAUGES),
        "pipeline_records_per_sec": pipeline_rate,
        "stream_records_per_sec": stream_rate,
    }
    if not totals:
        status.update(dict.fromkeys(_COUNTS))
    return status


def status_bytes(status: dict) -> bytes:
    return (json.dumps(status, sort_keys=True, indent=1) + "\n").encode("utf-8")


class RunStatus:
    """Publishes the status of one pipeline run: every `interval_secs` while it runs
    (from a thread), and once more when it ends. `write` takes the status bytes."""

    THREAD_NAME = "run-status"

    def __init__(self, write, engine: str, interval_secs: float, clock=time.time, other_totals=None):
        self._write = write
        self._other_totals = other_totals  # () -> totals, when the runner reports none
        self._engine = engine
        self._interval_secs = interval_secs
        self._clock = clock
        self._started_ms = self._now_ms()
        self._previous = None
        self._last_totals = {}
        self._stop = threading.Event()
        self._thread = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def publish(self, pipeline_result, state: str, finished: bool = False, committed_ms=None) -> dict:
        now_ms = self._now_ms()
        try:
            totals = metric_totals(pipeline_result) or self._totals_elsewhere()
        except Exception:
            if not finished:
                raise
            # A cancelled job's engine may be gone (Prism and Flink's job server are, after
            # Ctrl-C): the last status still says how the run ended and what was committed,
            # with the figures last reported.
            totals = self._last_totals
        self._last_totals = totals
        status = run_status(
            totals,
            now_ms,
            self._previous,
            state=state,
            engine=self._engine,
            run_started_ms=self._started_ms,
            run_finished_ms=now_ms if finished else None,
            committed_ms=committed_ms,
        )
        latest_arrival = _max_of(totals, _ARRIVAL_GAUGES)
        self._previous = Sample(now_ms, status["records_read"], latest_arrival)
        self._write(status_bytes(status))
        return status

    def _totals_elsewhere(self) -> dict:
        if self._other_totals is None:
            return {}
        try:
            return self._other_totals()
        except Exception:  # noqa: BLE001 - not there yet (a job starting) or gone: not reported
            return {}

    def follow(self, pipeline_result, on_error) -> None:
        """Publish every interval from a daemon thread until `stop()`."""

        def loop():
            while not self._stop.wait(self._interval_secs):
                try:
                    self.publish(pipeline_result, "RUNNING")
                except Exception as error:  # noqa: BLE001 - a status is never worth stopping the run
                    on_error(error)

        self._thread = threading.Thread(target=loop, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
