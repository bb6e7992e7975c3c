"""moto's real HTTP server, in-process, for tests that talk to AWS APIs through boto3.

    from moto_server import make_stream, moto_endpoint  # noqa: F401

`moto_endpoint` (session scope) yields "http://127.0.0.1:PORT" with dummy credentials
set in os.environ; the server stops at the end of the session.
"""

import os
import time

import boto3
import pytest
from moto.server import ThreadedMotoServer

from pipeline.run_local import free_port

REGION = "us-east-1"
DUMMY_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@pytest.fixture(scope="session")
def moto_endpoint():
    saved = {name: os.environ.get(name) for name in DUMMY_ENVIRONMENT}
    os.environ.update(DUMMY_ENVIRONMENT)  # never real credentials, whatever the shell has
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def kinesis_client(endpoint: str):
    return boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint)


def make_stream(endpoint: str, name: str, shards: int, timeout_secs: float = 10.0):
    """Creates a Kinesis stream, waits until it is ACTIVE, returns a client for it."""
    client = kinesis_client(endpoint)
    client.create_stream(StreamName=name, ShardCount=shards)
    deadline = time.monotonic() + timeout_secs
    while True:
        status = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
        if status == "ACTIVE":
            return client
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {name} still {status} after {timeout_secs} s")
        time.sleep(0.05)
