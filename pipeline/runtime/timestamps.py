"""Beam's Timestamp and the pipeline's epoch milliseconds, for every stage.

Timers carry milliseconds (the portable timer encoding): an event-time timer set a
microsecond after an instant fires at the instant itself. Everything here is on the ms grid.
"""

from apache_beam.utils.timestamp import Timestamp


def ms_to_timestamp(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


def timestamp_to_ms(ts: Timestamp) -> int:
    return ts.micros // 1000
