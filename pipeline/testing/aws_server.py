"""The embedded AWS: moto's real HTTP server on loopback, for tests, benchmarks and the
local system, and the small helpers around it (free ports, a stream).

    with MotoServer() as moto:            # in this process, on a free port
        kinesis = moto.make_stream("enriched-good", shards=2)

Only dummy credentials ever go with it (DUMMY_CREDENTIALS), whatever the shell has.
"""

import os
import socket
import time

import boto3

REGION = "us-east-1"
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_free(port: int) -> bool:
    """Whether a loopback port can be listened on (0 never is: it means "any")."""
    if not port:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class MotoServer:
    """moto's HTTP server on a free loopback port, in this process. Sets the dummy
    credentials in os.environ while it runs and restores what was there after."""

    def __enter__(self):
        from moto.server import ThreadedMotoServer

        self._saved = {name: os.environ.get(name) for name in DUMMY_CREDENTIALS}
        os.environ.update(DUMMY_CREDENTIALS)
        port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self._server.stop()
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def client(self, service: str):
        return client(service, self.endpoint)

    def make_stream(self, name: str, shards: int):
        return make_stream(self.endpoint, name, shards)


def client(service: str, endpoint: str):
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def make_stream(endpoint: str, name: str, shards: int, timeout_secs: float = 10.0):
    """Creates a Kinesis stream, waits until it is ACTIVE, returns a client for it."""
    kinesis = client("kinesis", endpoint)
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    deadline = time.monotonic() + timeout_secs
    while True:
        status = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
        if status == "ACTIVE":
            return kinesis
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {name} still {status} after {timeout_secs} s")
        time.sleep(0.05)
