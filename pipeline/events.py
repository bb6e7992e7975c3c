"""Rules for turning one Snowplow enriched event into level observations.

Plain Python, no Beam: `parse_enriched_line` is what `ParseEnrichedEvents` calls
for every record, and what the tests call directly.
"""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from snowplow_analytics_sdk.event_transformer import (
    ENRICHED_EVENT_FIELD_TYPES,
    transform,
)
from snowplow_analytics_sdk.snowplow_event_transformation_exception import (
    SnowplowEventTransformationException,
)

# The SDK's own field table: names and positions of the 131 TSV fields.
FIELD_NAMES = tuple(name for name, _ in ENRICHED_EVENT_FIELD_TYPES)
FIELD_INDEX = {name: i for i, name in enumerate(FIELD_NAMES)}

EVENT_TIME_FIELDS = ("collector_tstamp", "derived_tstamp", "dvce_created_tstamp")
DEFAULT_EVENT_TIME_FIELD = "collector_tstamp"

LEVEL_CONTEXT_PREFIX = "iglu:com.codecombat/level_context/jsonschema/"
# Every 1-0-x revision is compatible with 1-0-0 (additions only).
SUPPORTED_LEVEL_CONTEXT = re.compile(r"^1-0-(0|[1-9][0-9]*)$")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


class Observation(NamedTuple):
    """One usable level context: `player` was in `level` at `event_time_ms`.

    `index` is the context's position among the event's usable level contexts,
    so (event_id, index) names an observation exactly, even across duplicates.
    """

    player: str
    level: str
    event_time_ms: int
    event_id: str
    index: int = 0


class BadLine(Exception):
    """A line that must go to the dead-letter output, with why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Dead-letter reasons, so sinks, metrics and tests agree on the words.
NOT_UTF8 = "not_utf8"
UNPARSEABLE = "unparseable"
BAD_TIMESTAMP = "bad_timestamp"
UNUSABLE_CONTEXT = "unusable_context"
LATE = "late"


def parse_timestamp_ms(value: str) -> int:
    """Snowplow timestamp ('2026-11-27 14:00:05.123', or the SDK's ISO form) to epoch ms."""
    text = value.strip().replace(" ", "T")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MS


def format_timestamp_ms(ms: int) -> str:
    """Epoch ms to Snowplow's enriched TSV form, '2026-11-27 14:00:05.123'."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def event_time_ms(fields: list, event_time_field: str = DEFAULT_EVENT_TIME_FIELD) -> int:
    """The contract's event time: the chosen field, else `collector_tstamp`."""
    raw = fields[FIELD_INDEX[event_time_field]] or fields[FIELD_INDEX[DEFAULT_EVENT_TIME_FIELD]]
    if not raw:
        raise BadLine(BAD_TIMESTAMP, f"{event_time_field} and collector_tstamp are both empty")
    try:
        return parse_timestamp_ms(raw)
    except ValueError as error:
        raise BadLine(BAD_TIMESTAMP, f"cannot read timestamp {raw!r}: {error}") from None


def decode_line(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadLine(NOT_UTF8, str(error)) from None
    # Only the line terminator: trailing tabs are empty fields and must stay.
    return raw.rstrip("\r\n")


def _level_contexts(fields: list) -> list:
    """The raw level contexts of an event, in order, from `contexts` and `derived_contexts`."""
    found = []
    for name in ("contexts", "derived_contexts"):
        raw = fields[FIELD_INDEX[name]]
        if not raw:
            continue
        # The SDK's transform has already checked that this is valid context JSON.
        for context in json.loads(raw).get("data", []):
            schema = context.get("schema", "")
            if schema.startswith(LEVEL_CONTEXT_PREFIX):
                found.append((schema[len(LEVEL_CONTEXT_PREFIX) :], context.get("data")))
    return found


def _usable(value) -> bool:
    return isinstance(value, str) and value != ""


def parse_enriched_line(raw: bytes | str, event_time_field: str = DEFAULT_EVENT_TIME_FIELD) -> list:
    """Observations of one enriched TSV line.

    Returns [] for a valid event without any level context (most of a real stream).
    Raises BadLine for a line that does not parse, or whose level contexts are all
    unusable (unsupported version, not an object, null or empty user_id/level_slug).
    A context that is unusable beside a usable one is skipped: the usable one counts.
    """
    line = decode_line(raw)
    if not line.strip():
        raise BadLine(UNPARSEABLE, "empty line")
    try:
        transform(line)  # the SDK validates every one of the 131 fields
    except SnowplowEventTransformationException as error:
        raise BadLine(UNPARSEABLE, "; ".join(error.error_messages)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        # The SDK lets a few malformed contexts escape as plain exceptions.
        raise BadLine(UNPARSEABLE, repr(error)) from None
    fields = line.split("\t")
    try:
        contexts = _level_contexts(fields)
    except (ValueError, AttributeError, TypeError) as error:
        raise BadLine(UNPARSEABLE, f"contexts: {error!r}") from None
    if not contexts:
        return []

    observations, problems = [], []
    for version, data in contexts:
        if not SUPPORTED_LEVEL_CONTEXT.match(version):
            problems.append(f"unsupported level_context version {version}")
        elif not isinstance(data, dict):
            problems.append("level_context data is not an object")
        elif not (_usable(data.get("user_id")) and _usable(data.get("level_slug"))):
            problems.append(
                "level_context without user_id or level_slug "
                f"(user_id={data.get('user_id')!r}, level_slug={data.get('level_slug')!r})"
            )
        else:
            observations.append((data["user_id"], data["level_slug"]))
    if not observations:
        raise BadLine(UNUSABLE_CONTEXT, "; ".join(problems))

    time_ms = event_time_ms(fields, event_time_field)
    event_id = fields[FIELD_INDEX["event_id"]]
    return [
        Observation(player, level, time_ms, event_id, index)
        for index, (player, level) in enumerate(observations)
    ]


class DeadLetter(NamedTuple):
    """A record the pipeline could not use, with why and where it came from."""

    reason: str
    detail: str
    position: str  # "file.tsv:12", "shardId-000000000001:4959...", or "" when unknown
    line: str  # the raw line (undecodable bytes escaped)
    event_time_ms: int | None = None

    def to_json(self) -> str:
        return json.dumps(self._asdict(), ensure_ascii=False, sort_keys=True)


def printable(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="backslashreplace")
    return raw
