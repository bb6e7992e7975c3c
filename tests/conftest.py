"""Fixtures shared by the tests. Helpers that tests and benchmarks share live in
pipeline.testing (the embedded AWS, output readers, the reference model)."""

import signal
import warnings

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


# A shell starts a background job (`.ci/run &`) with SIGINT ignored, and every subprocess
# would inherit that: the Ctrl-C tests, which send their subprocesses SIGINT, need it
# handled as Python does by default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def sigint_handling_is_put_back(request):
    """Each test ends with the SIGINT handling it began with. Pipelines run in this process
    (Beam's job servers install SIGINT handlers of their own), and a SIGINT left ignored
    here would be inherited by every later subprocess, which Ctrl-C tests send it to.
    A test that changed it is named in a warning."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before and before is not None:
        signal.signal(signal.SIGINT, before)
        if after is signal.SIG_IGN:
            warnings.warn(f"{request.node.nodeid} left SIGINT ignored; put back", stacklevel=1)
