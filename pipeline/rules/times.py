"""Instants as epoch milliseconds (UTC), and their text forms. Plain Python, no Beam.

Every instant in the pipeline is an int of epoch ms; these are the only conversions.
"""

import re
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)  # for timestamps without an offset, which are UTC
_ONE_MS = timedelta(milliseconds=1)


# A date and a time of day to the second at least, as Snowplow writes them: Python's
# fromisoformat alone would also take '2026-11-27' or '2026-W48-5' as midnight.
_DATE_AND_TIME = re.compile(r"\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")


def parse_timestamp_ms(value: str) -> int:
    """Snowplow's '2026-11-27 14:00:05.123' or an ISO 8601 date and time to the second
    ('...Z', an offset, or naive = UTC) to epoch ms. Raises ValueError when it is not one."""
    if not _DATE_AND_TIME.match(value):
        raise ValueError(f"not a date and time to the second: {value[:40]!r}")
    if len(value) == 23 and value[10] == " ":  # enriched TSV's own form: the quick way
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            return (moment - _NAIVE_EPOCH) // _ONE_MS
    text = value.strip().replace(" ", "T")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MS


def parse_iso_ms(text) -> int | None:
    """Like parse_timestamp_ms, but None for anything that is not a readable time."""
    if not isinstance(text, str):
        return None
    try:
        return parse_timestamp_ms(text)
    except ValueError:
        return None


def format_timestamp_ms(ms: int) -> str:
    """Epoch ms to Snowplow's enriched TSV form, '2026-11-27 14:00:05.123'."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def iso_utc(ms: int) -> str:
    """'YYYY-MM-DDTHH:MM:SSZ', with milliseconds only when they are not zero."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    if ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_ms(moment) -> int:
    """A datetime (naive = UTC) or epoch seconds to epoch ms."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    return int(float(moment) * 1000)


def to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def window_start(time_ms: int, size_ms: int) -> int:
    """Start of the epoch-aligned window of `size_ms` that contains the instant."""
    return time_ms - time_ms % size_ms


def window_end_after(interval_end_ms: int, size_ms: int) -> int:
    """End of the window that contains the interval ending at `interval_end_ms`."""
    return window_start(interval_end_ms - 1, size_ms) + size_ms
