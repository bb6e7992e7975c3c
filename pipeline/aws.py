"""The one home of AWS plumbing: clients made where they are used (picklable factories),
what an error is (its code, whether it passes), and retrying with backoff.

Retries use Beam's own `apache_beam.utils.retry.with_exponential_backoff` (exponential,
fuzzed), bounded by RETRY_FOR_SECS of waiting in all: an outage shorter than that is
ridden out, a longer one fails loudly (AwsCallFailed), and the runner retries the
bundle or the run stops; every write is idempotent, so either is safe. Throttling,
5xx answers and broken connections pass; anything else (a missing table or bucket,
a refused credential) fails at once.

RETRY_FOR_SECS is 180 s: long enough for the outages a region's endpoint has in
practice (a load balancer replaced, a throttling burst), short enough that a pipeline
cut off from AWS says so within minutes instead of hanging. The environment variable
LEVEL_ANALYTICS_AWS_RETRY_FOR_SECS changes it for every process that imports this
module (the fault tests shorten it to see the loud failure quickly).

A caller that must not block while one of its resources is away (the Kinesis reader
polls its other shards meanwhile) keeps a RetrySchedule instead: the same backoff and
the same bound, per key, with the caller choosing when to try again.
"""

import collections
import functools
import logging
import os
import random
import threading
import time

from botocore.exceptions import BotoCoreError, ClientError

_LOG = logging.getLogger(__name__)

THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "TooManyRequestsException",
    }
)
SERVER_ERRORS = frozenset({"InternalServerError", "InternalFailure", "ServiceUnavailable", "InternalError"})
RETRY_FOR_SECS_ENV = "LEVEL_ANALYTICS_AWS_RETRY_FOR_SECS"


def _retry_for_secs(default: float = 180.0) -> float:
    text = os.environ.get(RETRY_FOR_SECS_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{RETRY_FOR_SECS_ENV}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{RETRY_FOR_SECS_ENV}={text!r} must be positive")
    return value


RETRY_FOR_SECS = _retry_for_secs()  # the longest outage a call rides out before it fails loudly
INITIAL_DELAY_SECS = 0.1
MAX_DELAY_SECS = 10.0


class AwsCallFailed(RuntimeError):
    """An AWS call that failed for good: not retryable, or still failing after RETRY_FOR_SECS.

    Each one is noted where it is made (gave_up_since): a local run's workers share their
    process with pipeline.main, which ends a run its engine left running after one."""

    def __init__(self, message: str):
        super().__init__(message)
        _give_ups.append((time.monotonic(), threading.current_thread().name, message))


_give_ups = collections.deque(maxlen=16)  # (time.monotonic(), thread name, message), latest last


def gave_up_since(since: float, not_on_threads=()) -> str | None:
    """The message of the latest AwsCallFailed made in this process at or after `since`
    (a time.monotonic()) on a thread not named in `not_on_threads`, else None."""
    for made, thread, message in reversed(list(_give_ups)):
        if made >= since and thread not in not_on_threads:
            return message
    return None


class IncompleteReply(ConnectionError):
    """A reply cut short that the client took for a whole one. When a connection closes in
    the middle of an answer's headers, http.client ends the headers there and botocore
    hands back an empty answer ({}, an empty object body) without an error: a GetItem
    would read as "no checkpoint", a GetRecords without Records as "the shard has
    ended". Transient (a ConnectionError): the call is made again."""


_BODILESS = frozenset({204, 304})


def reject_cut_replies(response_dict, operation_model, **_):
    """botocore's before-parse hook on every client made here: an answer that does not
    say how long it is (every AWS answer with a body carries Content-Length or is
    chunked), or whose body is shorter than it says, was cut short: IncompleteReply
    instead of an empty answer. (A streamed body, GetObject's, is checked as it is read.)"""
    headers = response_dict.get("headers") or {}
    if response_dict.get("status_code") in _BODILESS:
        return
    length = headers.get("content-length")
    if length is None and "transfer-encoding" not in headers:
        raise IncompleteReply(f"{operation_model.name}: the reply was cut short in its headers")
    body = response_dict.get("body")
    identity = headers.get("content-encoding", "identity") == "identity"
    if identity and isinstance(body, bytes) and length is not None and len(body) < int(length):
        raise IncompleteReply(f"{operation_model.name}: {len(body)} of the reply's {length} bytes came")


def require(response: dict, *keys: str, what: str) -> dict:
    """`response` if it has every one of `keys` (the ones AWS always sends), else
    IncompleteReply."""
    missing = [key for key in keys if key not in response]
    if missing:
        raise IncompleteReply(f"{what}: the reply has no {', '.join(missing)}: it was cut short")
    return response


def error_code(error) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    return ((getattr(error, "response", None) or {}).get("Error") or {}).get("Code", "") or ""


def http_status(error) -> int | None:
    """The HTTP status of an AWS answer, from botocore or Beam's S3 client (its `code`)."""
    status = ((getattr(error, "response", None) or {}).get("ResponseMetadata") or {}).get("HTTPStatusCode")
    if status is None and isinstance(getattr(error, "code", None), int):
        status = error.code
    return status


def is_transient(error) -> bool:
    """Worth another try: throttling, a server error, or no answer at all (connection
    refused, reset, timed out: botocore's BotoCoreError, OSError)."""
    if isinstance(error, AwsCallFailed):
        return False
    code = error_code(error)
    if code in THROTTLING or code in SERVER_ERRORS:
        return True
    if isinstance(error, ClientError):
        status = http_status(error)
        return status is not None and (status >= 500 or status == 429)
    if isinstance(error, BotoCoreError | OSError | ConnectionError):
        return True
    return False


def call_with_retries(
    call, what: str, retry_for_secs: float = RETRY_FOR_SECS, clock=None, now=time.monotonic
):
    """(the result of `call()`, how many retries it took), retrying transient failures
    with Beam's exponential backoff; AwsCallFailed with `what` once it gives up.

    The bound is wall time since the first try, the calls' own durations included
    (Beam's `stop_after_secs` alone sums only the sleeps: calls that hang until their
    timeout would stretch it many times over). `clock` (Beam's, with `sleep`) and `now`
    are for tests."""
    from apache_beam.utils import (
        retry,  # here: the live view and the dashboard import this module without Beam
    )

    attempts = 0
    started = now()

    def attempt():
        nonlocal attempts
        attempts += 1
        return call()

    def worth_retrying(error) -> bool:
        return is_transient(error) and now() - started < retry_for_secs

    retrying = retry.with_exponential_backoff(
        num_retries=10_000,  # bounded by time instead
        initial_delay_secs=INITIAL_DELAY_SECS,
        max_delay_secs=MAX_DELAY_SECS,
        stop_after_secs=retry_for_secs,
        retry_filter=worth_retrying,
        logger=lambda *args: _LOG.debug(*args),
        **({} if clock is None else {"clock": clock}),
    )(attempt)
    try:
        return retrying(), attempts - 1
    except Exception as error:
        reason = (
            "not retryable"
            if not is_transient(error)
            else f"still failing after {now() - started:.0f} s and {attempts} attempts, "
            f"the bound is {retry_for_secs:g} s"
        )
        raise AwsCallFailed(f"{what} failed ({reason}): {type(error).__name__}: {error}") from error


def backoff_delay_secs(attempt: int, base_secs: float, max_secs: float) -> float:
    """Exponential backoff with full jitter, for a caller that schedules its own next try
    instead of blocking (the Kinesis reader polls its other shards meanwhile)."""
    return random.uniform(0, min(max_secs, base_secs * 2 ** min(attempt, 30)))


class RetrySchedule:
    """Backoff and its bound for a caller that schedules its own next try, per key
    (e.g. one per Kinesis shard): how many tries in a row failed, since when, and how
    long to wait before the next. A key failing for longer than `retry_for_secs`
    without one success fails loudly (AwsCallFailed), as call_with_retries does.

    Worker-local and safe to lose: a fresh schedule only starts the clock again."""

    def __init__(
        self,
        base_secs: float,
        max_secs: float,
        retry_for_secs: float = RETRY_FOR_SECS,
        clock=time.monotonic,
    ):
        self._base_secs = base_secs
        self._max_secs = max_secs
        self._retry_for_secs = retry_for_secs
        self._clock = clock
        self._failing = {}  # key -> (clock at the first failure in a row, failures in a row)

    def failed(self, key, error, what: str) -> float:
        """Records a failed try; returns the seconds to wait before the next one.
        Raises AwsCallFailed once `key` has been failing for longer than the bound."""
        now = self._clock()
        since, failures = self._failing.get(key, (now, 0))
        failures += 1
        if now - since > self._retry_for_secs:
            raise AwsCallFailed(
                f"{what} failed (still failing after {now - since:.0f} s and {failures} attempts, "
                f"the bound is {self._retry_for_secs:g} s): {type(error).__name__}: {error}"
            ) from error
        self._failing[key] = (since, failures)
        if failures == 1:
            _LOG.warning("%s failed, retrying with backoff: %s: %s", what, type(error).__name__, error)
        return backoff_delay_secs(failures, self._base_secs, self._max_secs)

    def succeeded(self, key) -> None:
        self._failing.pop(key, None)

    def is_failing(self, key) -> bool:
        return key in self._failing


class ClientFactory:
    """A boto3 client made on demand, where it is used: picklable, so a DoFn carries the
    factory and makes its client in setup()."""

    def __init__(
        self,
        service: str,
        region: str,
        endpoint_url: str | None = None,
        client_args: dict | None = None,
        **config,
    ):
        self.service = service
        self.region = region
        self.endpoint_url = endpoint_url
        self.client_args = dict(client_args or {})  # more of boto3's client(...) arguments: keys, verify
        self.config = config  # botocore Config settings

    def __call__(self):
        import boto3
        import botocore.session
        from botocore.config import Config

        # botocore's own retries stay short: call_with_retries is the one that waits out an outage.
        settings = {
            "retries": {"mode": "standard", "max_attempts": 3},
            "connect_timeout": 5,
            "read_timeout": 30,
        }
        settings.update(self.config)
        # A session of its own: boto3's default session is not thread-safe, and DoFns on
        # several threads may make their clients at the same moment. Its loader is the
        # process's one: each session would otherwise parse the service's model anew,
        # about 9 MiB kept per DoFn instance Beam makes (traced in the soak's memory).
        session = botocore.session.Session()
        session.register_component("data_loader", _shared_loader())
        client = boto3.session.Session(botocore_session=session).client(
            self.service,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            config=Config(**settings),
            **self.client_args,
        )
        client.meta.events.register("before-parse", reject_cut_replies)
        return client

    def shared(self):
        """One client per process for these settings, made on first use: boto3 clients
        are thread-safe, and making one costs far more than a call (tens of ms)."""
        key = (
            self.service,
            self.region,
            self.endpoint_url,
            repr(sorted(self.client_args.items())),
            repr(sorted(self.config.items())),
        )
        with _SHARED_LOCK:
            client = _SHARED_CLIENTS.get(key)
            if client is None:
                client = _SHARED_CLIENTS[key] = self()
            return client


_SHARED_CLIENTS = {}
_SHARED_LOCK = threading.Lock()


@functools.cache
def _shared_loader():
    """botocore's loader of service models and endpoints, one kept per process: it caches
    what it parsed, read-only after, so sessions on several threads can share it."""
    from botocore.loaders import create_loader

    return create_loader()
