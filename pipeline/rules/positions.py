"""Where a stream read starts: the --initial_position flag's values, read without Beam or
boto3 (the options check them before anything runs; pipeline.sources.kinesis uses them)."""

from datetime import UTC, datetime
from typing import NamedTuple

from pipeline.rules.times import iso_utc

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


def pin(position: InitialPosition, now_ms: int) -> InitialPosition:
    """LATEST pinned to `now_ms` (AT_TIMESTAMP), so that the position names the same
    records whenever it is read again; other positions as they are."""
    if position.kind == LATEST:
        return InitialPosition(AT_TIMESTAMP, now_ms)
    return position


def pinned(text: str, now_ms: int) -> str:
    """An --initial_position value with LATEST pinned to `now_ms` (see `pin`)."""
    if parse_initial_position(text).kind == LATEST:
        return f"{AT_TIMESTAMP}:{iso_utc(now_ms)}"
    return text


def restart_position(first_start: str, checkpoint_ms: int | None, rebuild_ms: int) -> str:
    """Where a run on tables with a stored start reads from: without a checkpoint, where
    the first run started (a run killed before its first checkpoint reads again what it
    had read); after checkpoint C, from C - `rebuild_ms` (early enough to rebuild every
    player's state as of C), but never before the first run's start, whose older
    records were never counted."""
    if checkpoint_ms is None:
        return first_start
    start = parse_initial_position(first_start)
    from_ms = checkpoint_ms - rebuild_ms
    if start.kind == AT_TIMESTAMP:
        from_ms = max(from_ms, start.timestamp_ms)
    return f"{AT_TIMESTAMP}:{iso_utc(from_ms)}"
