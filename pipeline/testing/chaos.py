"""Faults between the pipeline and AWS, for the fault tests and bench/chaos.py.

Two tools, one per kind of fault:

* `Toxiproxy`: the network. A real TCP proxy (github.com/Shopify/toxiproxy, a Go
  program built from the Go module proxy) between the pipeline and the embedded AWS,
  driven over its HTTP API: AWS refusing connections (the proxy disabled), resetting
  them, adding latency, or cutting a connection in the middle of a response (the request
  was carried out, the reply is lost). The pipeline's --aws_endpoint_url points at the
  proxy; setup and checks talk to moto directly.

      with Toxiproxy() as toxiproxy:
          proxy = toxiproxy.proxy("aws", upstream="127.0.0.1:5000")
          with proxy.down():        # connections refused
              ...

* `AwsFaults`: AWS answering, but refusing: DynamoDB throttling, S3's 503 SlowDown,
  Kinesis' ProvisionedThroughputExceeded or ExpiredIterator, as botocore raises them. It
  wraps botocore's one call path (`BaseClient._make_api_call`) in this process, so it
  reaches a pipeline run in this process (Prism runs the SDK worker in the submitting
  process: LOOPBACK) and no other.
"""

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import NamedTuple

from pipeline.testing.aws_server import free_port

TOXIPROXY_VERSION = "2.5.0"
TOXIPROXY_ENV = "TOXIPROXY_SERVER"
TOXIPROXY_PACKAGE = "github.com/Shopify/toxiproxy/v2/cmd/server"


def cache_dir() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "level-analytics")


def default_toxiproxy_path() -> str:
    """$TOXIPROXY_SERVER, else where the install command below puts it."""
    return os.environ.get(TOXIPROXY_ENV) or os.path.join(
        cache_dir(), f"toxiproxy-{TOXIPROXY_VERSION}", "server"
    )


def install_command() -> str:
    directory = os.path.dirname(default_toxiproxy_path())
    return f"GOBIN={directory} go install {TOXIPROXY_PACKAGE}@v{TOXIPROXY_VERSION}"


def missing_toxiproxy_reason() -> str | None:
    """Why Toxiproxy cannot run here (None: it can), with the command that installs it."""
    path = default_toxiproxy_path()
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return None
    return f"no Toxiproxy server at {path}; build it with Go: {install_command()}"


class Toxiproxy:
    """A Toxiproxy server on a free loopback port, for the duration of a `with`."""

    def __init__(self, binary: str | None = None, log_path: str | None = None):
        self.binary = binary or default_toxiproxy_path()
        self.log_path = log_path
        self.process = None
        self.api = None

    def __enter__(self):
        if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
            raise FileNotFoundError(
                f"no Toxiproxy server at {self.binary}; build it with Go: {install_command()}"
            )
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [self.binary, "-host", "127.0.0.1", "-port", str(port)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self._call("GET", "/version")
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(f"Toxiproxy did not start ({self.binary})") from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text.decode("utf-8", errors="replace")  # /version answers plain text

    def proxy(self, name: str, upstream: str) -> "Proxy":
        """A new proxy on a free loopback port to `upstream` ("host:port")."""
        listen = f"127.0.0.1:{free_port()}"
        self._call(
            "POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        )
        return Proxy(self, name, listen)


class Proxy:
    """One proxied connection: its endpoint, and the faults it can put on it."""

    def __init__(self, server: Toxiproxy, name: str, listen: str):
        self._server = server
        self.name = name
        self.listen = listen
        self.endpoint = f"http://{listen}"
        self._lock = threading.Lock()

    def set_enabled(self, enabled: bool) -> None:
        """Disabled, the proxy closes its listener and every connection: connections refused."""
        self._server._call("POST", f"/proxies/{self.name}", {"enabled": enabled})

    def add_toxic(
        self, name: str, kind: str, stream: str = "downstream", toxicity: float = 1.0, **attributes
    ):
        self._server._call(
            "POST",
            f"/proxies/{self.name}/toxics",
            {"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes},
        )

    def remove_toxic(self, name: str) -> None:
        try:
            self._server._call("DELETE", f"/proxies/{self.name}/toxics/{name}")
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise

    def toxics(self) -> list:
        return self._server._call("GET", f"/proxies/{self.name}/toxics") or []

    def heal(self) -> None:
        """No toxic, enabled."""
        for toxic in self.toxics():
            self.remove_toxic(toxic["name"])
        self.set_enabled(True)

    @contextlib.contextmanager
    def toxic(self, name: str, kind: str, stream: str = "downstream", toxicity: float = 1.0, **attributes):
        self.add_toxic(name, kind, stream, toxicity, **attributes)
        try:
            yield self
        finally:
            self.remove_toxic(name)

    @contextlib.contextmanager
    def down(self):
        """AWS unreachable: connections refused."""
        self.set_enabled(False)
        try:
            yield self
        finally:
            self.set_enabled(True)

    def resetting(self):
        """AWS resetting every connection (TCP RST) as it is made."""
        return self.toxic("reset", "reset_peer", "upstream", timeout=0)

    def slow(self, latency_ms: int, jitter_ms: int = 0):
        """Every response `latency_ms` late."""
        return self.toxic("latency", "latency", "downstream", latency=latency_ms, jitter=jitter_ms)

    def cutting_responses(self, after_bytes: int, toxicity: float = 1.0):
        """Each connection closed once `after_bytes` of responses went through it: the
        request that reaches past it was carried out, its reply is cut short."""
        return self.toxic("cut", "limit_data", "downstream", toxicity, bytes=after_bytes)


# --- Faults as AWS answers them ---------------------------------------------------------------


class Fault:
    """Calls of `operations` of `service` (whose Key contains `key_contains`, if given)
    fail with `code` (HTTP `status`) while active: for `secs` of wall time from the first
    such call (forever when None), or on the `calls` numbered calls (1-based, counted over
    the matching calls); none before `after_secs` from when the fault was made."""

    def __init__(
        self, service, operations, code, status=400, secs=None, calls=None, key_contains=None, after_secs=0.0
    ):
        self.service = service
        self.operations = frozenset(operations)
        self.code = code
        self.status = status
        self.secs = secs
        self.calls = None if calls is None else frozenset(calls)
        self.key_contains = key_contains
        self.after_secs = after_secs
        self.made = time.monotonic()
        self.started = None
        self.seen = 0
        self.raised = 0

    def to_dict(self) -> dict:
        return {
            "service": self.service,
            "operations": sorted(self.operations),
            "code": self.code,
            "status": self.status,
            "secs": self.secs,
            "calls": None if self.calls is None else sorted(self.calls),
            "key_contains": self.key_contains,
            "after_secs": self.after_secs,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Fault":
        return cls(**data)

    def error_for(self, service: str, operation: str, params: dict):
        from botocore.exceptions import ClientError

        if service != self.service or operation not in self.operations:
            return None
        if self.key_contains is not None and self.key_contains not in str(params.get("Key", "")):
            return None
        if time.monotonic() - self.made < self.after_secs:
            return None
        self.seen += 1
        if self.calls is not None:
            hit = self.seen in self.calls
        else:
            if self.started is None:
                self.started = time.monotonic()
            hit = self.secs is None or time.monotonic() - self.started < self.secs
        if not hit:
            return None
        self.raised += 1
        return ClientError(
            {
                "Error": {"Code": self.code, "Message": f"injected {self.code}"},
                "ResponseMetadata": {"HTTPStatusCode": self.status},
            },
            operation,
        )


def dynamodb_throttling(secs: float, after_secs: float = 0.0) -> Fault:
    return Fault("dynamodb", {"UpdateItem"}, "ThrottlingException", 400, secs=secs, after_secs=after_secs)


def s3_slow_down(secs: float, key_contains: str | None = None, after_secs: float = 0.0) -> Fault:
    writes = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
    return Fault("s3", writes, "SlowDown", 503, secs=secs, key_contains=key_contains, after_secs=after_secs)


def kinesis_throttling(calls, after_secs: float = 0.0) -> Fault:
    return Fault(
        "kinesis",
        {"GetRecords"},
        "ProvisionedThroughputExceededException",
        400,
        calls=calls,
        after_secs=after_secs,
    )


def kinesis_expired_iterators(calls, after_secs: float = 0.0) -> Fault:
    return Fault(
        "kinesis", {"GetRecords"}, "ExpiredIteratorException", 400, calls=calls, after_secs=after_secs
    )


FAULTS_ENV = "LEVEL_ANALYTICS_TEST_FAULTS"  # JSON list of Fault.to_dict(), for `run_reporting`


def faults_env(*faults: Fault) -> dict:
    """The environment that makes a `python -m pipeline.testing.chaos` child meet `faults`."""
    return {FAULTS_ENV: json.dumps([fault.to_dict() for fault in faults])}


class AwsFaults:
    """`with AwsFaults(fault, ...)`: botocore clients of this process meet the faults."""

    def __init__(self, *faults: Fault):
        self.faults = faults
        self._lock = threading.Lock()
        self._original = None

    def __enter__(self):
        from botocore.client import BaseClient

        original = self._original = BaseClient._make_api_call
        faults, lock = self.faults, self._lock

        def make_api_call(client, operation_name, api_params):
            service = client.meta.service_model.service_name
            with lock:
                errors = [f.error_for(service, operation_name, api_params) for f in faults]
            error = next((e for e in errors if e is not None), None)
            if error is not None:
                raise error
            return original(client, operation_name, api_params)

        BaseClient._make_api_call = make_api_call
        return self

    def __exit__(self, *exc):
        from botocore.client import BaseClient

        BaseClient._make_api_call = self._original


# --- One pipeline run with a fault, checked against the model ----------------------------------

METRICS_PREFIX = "METRICS "
JOB_SERVER_TIMEOUT_SECS = 10 * 365 * 86400
TIMEOUT_SECS, WINDOW_SECS = 300, 60


def run_reporting(argv: list) -> int:
    """pipeline.main.run(argv) in this process, meeting the AWS faults of $FAULTS_ENV, then
    one line "METRICS {name: total}" of its Beam metrics on stdout (what
    pipeline_status.json does not show) and how many faults were injected."""
    import logging

    from pipeline.main import run
    from pipeline.runtime.run_status import metric_totals

    logging.getLogger().setLevel(logging.WARNING)
    faults = [Fault.from_dict(data) for data in json.loads(os.environ.get(FAULTS_ENV) or "[]")]
    with AwsFaults(*faults):
        result = run(argv)
    totals = metric_totals(result)
    totals["injected_faults"] = sum(fault.raised for fault in faults)
    print(METRICS_PREFIX + json.dumps(totals, sort_keys=True), flush=True)
    return 0


class FaultRun:
    """One streaming pipeline (`python -m pipeline.testing.chaos ARGV`, a child process)
    reading a 2-shard stream of the embedded AWS and writing DynamoDB and S3 through
    `pipeline_endpoint` (a proxy, or moto itself); setup and checks talk to moto directly.
    Flags as tests/test_restart.py runs it, so a restart with the same flags resumes."""

    def __init__(self, moto_endpoint: str, pipeline_endpoint: str, name: str, workdir: str, env=None):
        self.moto_endpoint = moto_endpoint
        self.pipeline_endpoint = pipeline_endpoint
        self.name = name
        self.bucket = f"{name}-bucket"
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.process = None
        self.log_path = None
        self.started = None
        self.runs = 0

    def client(self, service: str):
        from pipeline.testing.aws_server import client

        return client(service, self.moto_endpoint)

    def create(self, shards: int = 2):
        from pipeline.testing.aws_server import make_stream

        make_stream(self.moto_endpoint, self.name, shards=shards)
        self.client("s3").create_bucket(Bucket=self.bucket)

    def put(self, lines: list) -> None:
        from pipeline.apps.producer import put_records

        put_records(self.client("kinesis"), self.name, lines)

    def argv(self, *extra) -> list:
        from pipeline.testing.aws_server import REGION

        return [
            f"--stream_name={self.name}",
            f"--aws_endpoint_url={self.pipeline_endpoint}",
            f"--aws_region={REGION}",
            "--initial_position=TRIM_HORIZON",
            "--max_out_of_orderness_secs=10",
            f"--snapshot_path=s3://{self.bucket}/snapshots",
            f"--dead_letter_path=s3://{self.bucket}/dead-letters",
            "--write_dynamodb",
            "--create_tables",
            f"--level_table={self.name}-levels",
            f"--transitions_table={self.name}-transitions",
            f"--progress_table={self.name}-progress",
            # Beam's PortableRunner makes job_server_timeout (300 s by default) the deadline
            # of the job's state stream: without this, a run on Prism longer than that ends
            # with DEADLINE_EXCEEDED.
            f"--job_server_timeout={JOB_SERVER_TIMEOUT_SECS}",
            *extra,
        ]

    def start(self, *extra) -> None:
        import sys

        self.runs += 1
        self.log_path = os.path.join(self.workdir, f"{self.name}-run{self.runs}.log")
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.testing.chaos", *self.argv(*extra)],
            cwd=root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.started = time.monotonic()

    def wait_for(self, what: str, reached, timeout_secs: float = 300) -> float:
        """Polls `reached()` until true; the seconds since the start. Fails if the run ends first."""
        deadline = time.monotonic() + timeout_secs
        while not reached():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the pipeline ended ({self.process.returncode}) before {what}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout_secs} s")
            time.sleep(0.1)
        return time.monotonic() - self.started

    def history_objects(self) -> int:
        listing = self.client("s3").list_objects_v2(Bucket=self.bucket, Prefix="snapshots/history/levels/")
        return listing.get("KeyCount", 0)

    def status(self) -> dict:
        try:
            body = self.client("s3").get_object(Bucket=self.bucket, Key="snapshots/pipeline_status.json")[
                "Body"
            ]
        except Exception:  # noqa: BLE001 - none yet
            return {}
        return json.loads(body.read())

    def finish(self, timeout_secs: float = 900) -> "Finished":
        try:
            returncode = self.process.wait(timeout=timeout_secs)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the pipeline did not end within {timeout_secs} s:\n{self.log()}") from None
        text = self.log(None)
        metrics = {}
        for line in text.splitlines():
            if line.startswith(METRICS_PREFIX):
                metrics = json.loads(line[len(METRICS_PREFIX) :])
        return Finished(returncode, metrics, text, time.monotonic() - self.started)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self, tail: int | None = 4000) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        return text if tail is None else text[-tail:]

    def outputs_problems(self, observations, malformed: int) -> list:
        """What differs from the contract (empty: nothing): history and tables against the
        reference model, every malformed line once in the dead letters."""
        from pipeline.testing.outputs import (
            assert_history_equals_model,
            read_dead_letter_lines,
            read_history,
            read_tables,
        )
        from pipeline.testing.reference_model import model_transition_totals

        problems = []
        s3 = self.client("s3")
        try:
            assert_history_equals_model(
                read_history(f"s3://{self.bucket}/snapshots", s3), observations, TIMEOUT_SECS, WINDOW_SECS
            )
        except AssertionError as error:
            problems.append(f"history: {str(error)[:500]}")
        totals, levels = read_tables(
            self.client("dynamodb"), f"{self.name}-transitions", f"{self.name}-levels"
        )
        if totals != model_transition_totals(observations, TIMEOUT_SECS):
            problems.append("transitions table differs from the model")
        if not levels or set(levels.values()) != {0}:
            problems.append(f"level table not all 0 at the end: {sorted(set(levels.values()))}")
        dead = read_dead_letter_lines(f"s3://{self.bucket}/dead-letters", s3)
        if not len(dead) == len(set(dead)) == malformed:
            problems.append(f"dead letters: {len(dead)} ({len(set(dead))} distinct), expected {malformed}")
        return problems


class Finished(NamedTuple):
    returncode: int
    metrics: dict
    log: str
    seconds: float


if __name__ == "__main__":
    import sys

    sys.exit(run_reporting(sys.argv[1:]))


def fast_kinesis_for_moto() -> None:
    """Makes moto's Kinesis shards keep up with a long stream (the soak puts 1,000 records
    a second for 30 minutes): as shipped, each PutRecord lists every key of its shard
    (`get_max_sequence_number`) and each GetRecords scans the shard from its first record,
    so both grow with the stream and a long run is quadratic; and a GetRecords racing a
    PutRecord fails with "OrderedDict mutated during iteration" (a 500). A shard's
    sequence numbers are consecutive integers from 1, so a read can start at its cursor.
    The answers are moto's own; only their cost changes. For moto's server process only."""
    import threading

    from moto.kinesis.models import Shard

    lock = threading.Lock()
    original_get_records = Shard.get_records
    original_put_record = Shard.put_record

    def get_max_sequence_number(shard) -> int:
        return next(reversed(shard.records)) if shard.records else 0

    def get_min_sequence_number(shard) -> int:
        return next(iter(shard.records)) if shard.records else 0

    def get_records(shard, last_sequence_id, limit):
        with lock:
            last = int(last_sequence_id)
            if not shard.records:
                return [], last, 0
            newest = next(reversed(shard.records))
            sequence = max(last + 1, next(iter(shard.records)))
            results = []
            while sequence <= newest and (limit is None or len(results) < limit):
                record = shard.records.get(sequence)
                if record is None:  # not consecutive: moto's own way
                    return original_get_records(shard, last_sequence_id, limit)
                results.append(record)
                sequence += 1
            if not results:
                return [], last, 0
            behind_ms = int((shard.records[newest].created_at - results[-1].created_at) * 1000)
            return results, sequence - 1, behind_ms

    def put_record(shard, *args, **kwargs):
        with lock:
            return original_put_record(shard, *args, **kwargs)

    Shard.get_max_sequence_number = get_max_sequence_number
    Shard.get_min_sequence_number = get_min_sequence_number
    Shard.get_records = get_records
    Shard.put_record = put_record


def serve_moto(port: int, fast_kinesis: bool = True) -> None:
    """moto's server on loopback (`python -m moto.server`), with fast_kinesis_for_moto()."""
    from moto.server import main

    if fast_kinesis:
        fast_kinesis_for_moto()
    main(["-H", "127.0.0.1", "-p", str(port)])


@contextlib.contextmanager
def moto_process(log_path: str | None = None, fast_kinesis: bool = True):
    """moto's server in a process of its own on a free loopback port (so its memory and CPU
    are its own, for the soak and the chaos benchmarks): yields (endpoint, Popen). With
    `fast_kinesis`, its Kinesis keeps up with long streams (fast_kinesis_for_moto)."""
    import sys

    from pipeline.testing.aws_server import DUMMY_CREDENTIALS, client

    port = free_port()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    code = f"from pipeline.testing.chaos import serve_moto; serve_moto({port}, fast_kinesis={fast_kinesis})"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=root,
        stdout=log,
        stderr=log,
        env={**os.environ, **DUMMY_CREDENTIALS},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client("s3", endpoint).list_buckets()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto did not start") from None
                time.sleep(0.2)
        yield endpoint, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
