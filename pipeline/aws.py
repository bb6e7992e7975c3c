"""The one home of AWS plumbing: clients made where they are used (picklable factories),
what an error is (its code, whether it passes), and retrying with backoff.

Retries use Beam's own `apache_beam.utils.retry.with_exponential_backoff` (exponential,
fuzzed), bounded by RETRY_FOR_SECS of waiting in all: an outage shorter than that is
ridden out, a longer one fails loudly (AwsCallFailed), and the runner retries the
bundle or the run stops; every write is idempotent, so either is safe. Throttling,
5xx answers and broken connections pass; anything else (a missing table or bucket,
a refused credential) fails at once.
"""

import logging
import random

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
RETRY_FOR_SECS = 180.0  # the longest outage a call rides out before it fails loudly
INITIAL_DELAY_SECS = 0.1
MAX_DELAY_SECS = 10.0


class AwsCallFailed(RuntimeError):
    """An AWS call that failed for good: not retryable, or still failing after RETRY_FOR_SECS."""


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
    refused, reset, timed out: botocore's BotoCoreError, OSError, or Beam's S3 client
    error without a status)."""
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
    if type(error).__name__ in ("S3ClientError", "BeamIOError"):  # Beam's S3 filesystem
        status = http_status(error)
        return status is None or status >= 500 or status in (408, 429)
    return False


def call_with_retries(call, what: str, retry_for_secs: float = RETRY_FOR_SECS, clock=None):
    """(the result of `call()`, how many retries it took), retrying transient failures
    with Beam's exponential backoff; AwsCallFailed with `what` once it gives up."""
    from apache_beam.utils import (
        retry,  # here: the live view and the dashboard import this module without Beam
    )

    attempts = 0

    def attempt():
        nonlocal attempts
        attempts += 1
        return call()

    retrying = retry.with_exponential_backoff(
        num_retries=10_000,  # bounded by time instead
        initial_delay_secs=INITIAL_DELAY_SECS,
        max_delay_secs=MAX_DELAY_SECS,
        stop_after_secs=retry_for_secs,
        retry_filter=is_transient,
        logger=lambda *args: _LOG.debug(*args),
        **({} if clock is None else {"clock": clock}),
    )(attempt)
    try:
        return retrying(), attempts - 1
    except Exception as error:
        reason = "not retryable" if not is_transient(error) else f"still failing after {attempts} attempts"
        raise AwsCallFailed(f"{what} failed ({reason}): {type(error).__name__}: {error}") from error


def backoff_delay_secs(attempt: int, base_secs: float, max_secs: float) -> float:
    """Exponential backoff with full jitter, for a caller that schedules its own next try
    instead of blocking (the Kinesis reader polls its other shards meanwhile)."""
    return random.uniform(0, min(max_secs, base_secs * 2**attempt))


class ClientFactory:
    """A boto3 client made on demand, where it is used: picklable, so a DoFn carries the
    factory and makes its client in setup()."""

    def __init__(self, service: str, region: str, endpoint_url: str | None = None, **config):
        self.service = service
        self.region = region
        self.endpoint_url = endpoint_url
        self.config = config

    def __call__(self):
        import boto3
        from botocore.config import Config

        # botocore's own retries stay short: call_with_retries is the one that waits out an outage.
        settings = {
            "retries": {"mode": "standard", "max_attempts": 3},
            "connect_timeout": 5,
            "read_timeout": 30,
        }
        settings.update(self.config)
        return boto3.client(
            self.service, region_name=self.region, endpoint_url=self.endpoint_url, config=Config(**settings)
        )
