"""Helpers shared by the benchmark items: child runs, moto, statistics."""

import json
import os
import subprocess
import sys
import time

from pipeline.run_local import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def run_child(kind: str, args: dict, timeout_secs: float = 900) -> dict:
    """Runs `python -m bench.child KIND ARGS` and returns its RESULT line as a dict."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.child", kind, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_secs,
        env={**os.environ, **DUMMY_AWS, "PYTHONPATH": ROOT},
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"bench child {kind} failed ({done.returncode}):\n{done.stderr[-4000:]}")


def start_child(kind: str, args: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.child", kind, json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **DUMMY_AWS, "PYTHONPATH": ROOT},
    )


def child_result(process: subprocess.Popen, timeout_secs: float = 900) -> dict:
    stdout, stderr = process.communicate(timeout=timeout_secs)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"bench child failed ({process.returncode}):\n{stderr[-4000:]}")


class MotoServer:
    """moto's HTTP server on loopback, in this process (as tests/moto_server.py does)."""

    def __enter__(self):
        from moto.server import ThreadedMotoServer

        os.environ.update(DUMMY_AWS)  # never real credentials
        port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self._server.stop()

    def client(self, service: str):
        import boto3

        return boto3.client(service, region_name="us-east-1", endpoint_url=self.endpoint)

    def make_stream(self, name: str, shards: int):
        client = self.client("kinesis")
        client.create_stream(StreamName=name, ShardCount=shards)
        while (
            client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
            != "ACTIVE"
        ):
            time.sleep(0.05)
        return client


def put_records(client, stream: str, lines: list) -> list:
    """PutRecords in batches of 500 (retrying rejected ones); returns the wall time each
    record was accepted, in order."""
    accepted = [0.0] * len(lines)
    for start in range(0, len(lines), 500):
        batch = list(range(start, min(start + 500, len(lines))))
        while batch:
            answer = client.put_records(
                StreamName=stream,
                Records=[{"Data": lines[i], "PartitionKey": str(i % 997)} for i in batch],
            )
            now = time.time()
            retry = []
            for i, result in zip(batch, answer["Records"], strict=True):
                if "ErrorCode" in result:
                    retry.append(i)
                else:
                    accepted[i] = now
            batch = retry
    return accepted


def percentile(values: list, fraction: float):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def read_snapshot_dir(root: str) -> dict:
    """{history object name: bytes} of a snapshot directory, for comparing two runs."""
    found = {}
    for folder in ("levels", "transitions"):
        path = os.path.join(root, "history", folder)
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                with open(os.path.join(path, name), "rb") as handle:
                    found[f"{folder}/{name}"] = handle.read()
    return found
