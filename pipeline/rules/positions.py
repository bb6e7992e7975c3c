"""Where a stream read starts: the --initial_position flag's values, read without Beam or
boto3 (the options check them before anything runs; pipeline.sources.kinesis uses them)."""

from datetime import UTC, datetime
from typing import NamedTuple

TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
AT_TIMESTAMP = "AT_TIMESTAMP"


class InitialPosition(NamedTuple):
    kind: str  # LATEST, TRIM_HORIZON or AT_TIMESTAMP
    timestamp_ms: int | None = None


def parse_initial_position(text: str) -> InitialPosition:
    """'LATEST', 'TRIM_HORIZON' or 'AT_TIMESTAMP:<ISO 8601>' (naive means UTC)."""
    value = (text or "").strip()
    if value.upper() in (LATEST, TRIM_HORIZON):
        return InitialPosition(value.upper())
    prefix = AT_TIMESTAMP + ":"
    if value.upper().startswith(prefix):
        moment_text = value[len(prefix) :].strip()
        try:
            moment = datetime.fromisoformat(moment_text)
        except ValueError:
            raise ValueError(
                f"initial position {text!r}: {moment_text!r} is not an ISO 8601 time, "
                "e.g. AT_TIMESTAMP:2026-11-27T14:00:00Z"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return InitialPosition(AT_TIMESTAMP, int(moment.timestamp() * 1000))
    raise ValueError(
        f"initial position {text!r} is not one of LATEST, TRIM_HORIZON or "
        "AT_TIMESTAMP:<ISO 8601 time> (e.g. AT_TIMESTAMP:2026-11-27T14:00:00Z)"
    )
