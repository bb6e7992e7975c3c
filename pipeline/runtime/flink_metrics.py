"""The pipeline's figures from Flink's own REST API while a job runs.

Beam's Flink job server (2.62) answers a job's metrics only once the job has ended, so on
Flink the status would have no figures while a stream runs. Flink itself has them: every
Beam counter and gauge of a step is a Flink metric of the operator that runs it, with ids
like `0.[4]{ReadKinesis__ParseEvents__TrackPlayers}.level_analytics_kinesis_records_read`
(subtask, operator, namespace_name), under `GET /jobs/<job>/vertices/<vertex>/metrics`.

Where the REST API is: a cluster's is `--flink_master` (its JobManager's REST address).
The embedded Flink (`[local]`) would take a random port; `embedded_rest_url()` fixes it
by pointing the job server at a Flink configuration directory of our own
(`FLINK_CONF_DIR`, read by Flink when no other directory is given) holding `rest.port`.
"""

import atexit
import json
import os
import random
import shutil
import socket
import tempfile
import urllib.request
from urllib.parse import quote

from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions

from pipeline.runtime import metrics
from pipeline.runtime.flink import LOCAL_MASTERS, is_flink, master_address

_MARK = f".{metrics.NAMESPACE}_"
# Set once per shard or key: the same value wherever Flink lists it, never summed.
_GAUGE_PREFIXES = ("kinesis_latest_arrival_ms_", "kinesis_behind_ms_", "kinesis_watermark_ms_")
_GAUGES = ("ledger_closed_until_ms", "committed_until_ms")
TIMEOUT_SECS = 5


def totals_of(metric_values) -> dict:
    """{metric name: total} from Flink's [{"id", "value"}] of every vertex: counters summed
    over subtasks and operators, gauges the largest value (as metric_totals does)."""
    totals = {}
    for entry in metric_values:
        metric_id, value = entry.get("id", ""), entry.get("value")
        if _MARK not in metric_id or value in (None, ""):
            continue
        name = metric_id.rsplit(_MARK, 1)[1]
        number = int(float(value))
        if name in _GAUGES or name.startswith(_GAUGE_PREFIXES):
            totals[name] = max(totals.get(name, number), number)
        else:
            totals[name] = totals.get(name, 0) + number
    return totals


def _get(url: str):
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECS) as response:  # noqa: S310 - http(s) only
        return json.loads(response.read())


class FlinkRestMetrics:
    """The pipeline's metric totals of the newest running job at a Flink REST address."""

    def __init__(self, rest_url: str):
        self.rest_url = rest_url.rstrip("/")

    def totals(self) -> dict:
        jobs = _get(f"{self.rest_url}/jobs/overview")["jobs"]
        running = [job for job in jobs if job.get("state") == "RUNNING"]
        if not running:
            return {}
        job = max(running, key=lambda j: j.get("start-time", 0))["jid"]
        values = []
        for vertex in _get(f"{self.rest_url}/jobs/{job}")["vertices"]:
            base = f"{self.rest_url}/jobs/{job}/vertices/{vertex['id']}/metrics"
            ids = [entry["id"] for entry in _get(base) if _MARK in entry["id"]]
            if ids:
                values += _get(f"{base}?get={quote(','.join(ids), safe=',')}")
        return totals_of(values)


def cluster_rest_url(flink_master: str) -> str | None:
    """A cluster's REST address from --flink_master (None for [local] and [auto])."""
    address = master_address(flink_master)
    if address is None:
        return None
    scheme = "https" if flink_master.strip().startswith("https://") else "http"
    return f"{scheme}://{address[0]}:{address[1]}"


def embedded_rest_url() -> str | None:
    """Points the embedded Flink that the job server will start at a configuration of our
    own, with its REST API on a free loopback port; its URL. None (left alone) when
    FLINK_CONF_DIR is set already: the user's configuration decides."""
    if os.environ.get("FLINK_CONF_DIR"):
        return None
    port = _free_port_below_ephemeral()
    if port is None:
        return None
    conf_dir = tempfile.mkdtemp(prefix="level-analytics-flink-conf-")
    atexit.register(shutil.rmtree, conf_dir, True)
    with open(os.path.join(conf_dir, "flink-conf.yaml"), "w", encoding="utf-8") as handle:
        handle.write(f"rest.port: {port}\n")
    os.environ["FLINK_CONF_DIR"] = conf_dir  # inherited by the job server Beam starts
    return f"http://127.0.0.1:{port}"


def _free_port_below_ephemeral(tries: int = 50) -> int | None:
    """A free loopback port under Linux's ephemeral range (32768-60999): Flink binds it
    seconds later, and the free ports other programs ask the system for (bind to 0) come
    from that range, so none of them takes it meanwhile."""
    for _ in range(tries):
        port = random.randrange(20_000, 32_000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return None


def live_figures(options: PipelineOptions):
    """On Flink, a callable giving the running job's metric totals from Flink's REST API
    (for the status while the job server reports none); None elsewhere, and where the
    REST address is not known: a job server started by someone else (--job_endpoint)
    runs an embedded Flink whose port is not ours to set."""
    if not is_flink(options):
        return None
    master = options.view_as(FlinkRunnerOptions).flink_master.strip()
    if master in LOCAL_MASTERS:
        url = None if options.view_as(PortableOptions).job_endpoint else embedded_rest_url()
    else:
        url = cluster_rest_url(master)
    return FlinkRestMetrics(url).totals if url else None
