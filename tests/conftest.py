"""Fixtures shared by the tests. Helpers that tests and benchmarks share live in
pipeline.testing (the embedded AWS, output readers, the reference model)."""

import pytest

from pipeline.testing.aws_server import MotoServer


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's real HTTP server on a loopback port for the whole session: "http://127.0.0.1:PORT",
    with dummy credentials in os.environ. Tests give their streams, tables and buckets
    names of their own."""
    with MotoServer() as moto:
        yield moto.endpoint


def pytest_collection_modifyitems(items):
    """A test that talks to the embedded AWS is marked `aws`, whatever its file."""
    for item in items:
        if "moto_endpoint" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.aws)
