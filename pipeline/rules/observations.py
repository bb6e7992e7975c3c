"""Rules for turning one Snowplow enriched event into level observations.

Plain Python, no Beam: `parse_enriched_line` is what `ParseEnrichedEvents` calls
for every record, and what the tests call directly.
"""

import json
import re
from operator import itemgetter
from typing import NamedTuple

from snowplow_analytics_sdk.event_transformer import (
    ENRICHED_EVENT_FIELD_TYPES,
    convert_bool,
    convert_contexts,
    convert_double,
    convert_int,
    convert_string,
    convert_tstamp,
    convert_unstruct,
    jsonify_good_event,
)
from snowplow_analytics_sdk.json_shredder import SCHEMA_URI_REGEX
from snowplow_analytics_sdk.snowplow_event_transformation_exception import (
    SnowplowEventTransformationException,
)

from pipeline.rules.times import parse_timestamp_ms

# The SDK's own field table: names and positions of the 131 TSV fields.
FIELD_NAMES = tuple(name for name, _ in ENRICHED_EVENT_FIELD_TYPES)
FIELD_INDEX = {name: i for i, name in enumerate(FIELD_NAMES)}


def _fields_converted_by(convert) -> tuple:
    return tuple(i for i, (_, c) in enumerate(ENRICHED_EVENT_FIELD_TYPES) if c is convert)


# Validation as the SDK's `transform` does it, by the type its field table gives each
# field, but in bulk and without building its 131-key dictionary. Its string and
# timestamp converters accept any text; these are the ones that can reject a value.
_INT_FIELDS = itemgetter(*_fields_converted_by(convert_int))
_DOUBLE_FIELDS = itemgetter(*_fields_converted_by(convert_double))
_BOOL_FIELDS = itemgetter(*_fields_converted_by(convert_bool))
_BOOL_TEXT = frozenset(("", "0", "1"))  # convert_bool accepts exactly "1" and "0"
(_UNSTRUCT_INDEX,) = _fields_converted_by(convert_unstruct)
_CONTEXT_FIELD_INDEXES = _fields_converted_by(convert_contexts)
if {c for _, c in ENRICHED_EVENT_FIELD_TYPES} != {
    convert_string,
    convert_tstamp,
    convert_int,
    convert_double,
    convert_bool,
    convert_unstruct,
    convert_contexts,
}:
    raise ImportError("the Snowplow SDK's field table has a converter this parser does not check")

EVENT_TIME_FIELDS = ("collector_tstamp", "derived_tstamp", "dvce_created_tstamp")
DEFAULT_EVENT_TIME_FIELD = "collector_tstamp"

LEVEL_CONTEXT_PREFIX = "iglu:com.codecombat/level_context/jsonschema/"
# Every 1-0-x revision is compatible with 1-0-0 (additions only).
SUPPORTED_LEVEL_CONTEXT = re.compile(r"^1-0-(0|[1-9][0-9]*)$")


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


def _keep_nothing(key, value):
    return ()


# The SDK's field table with its converters that cannot fail replaced by a no-op: the
# SDK's own loop over it reports exactly the errors `transform` would, in its words.
_ERRORS_ONLY_FIELD_TYPES = tuple(
    (name, convert if convert not in (convert_string, convert_tstamp) else _keep_nothing)
    for name, convert in ENRICHED_EVENT_FIELD_TYPES
)


def sdk_errors(fields: list) -> str | None:
    """What the SDK's `transform` says is wrong with these fields, or None if nothing."""
    try:
        jsonify_good_event(fields, _ERRORS_ONLY_FIELD_TYPES, add_geolocation_data=False)
    except SnowplowEventTransformationException as error:
        return "; ".join(error.error_messages)
    return None


def _check_fields(fields: list) -> None:
    """Raises if the SDK's `transform` would reject a field other than the contexts."""
    [int(value) for value in _INT_FIELDS(fields) if value]
    [float(value) for value in _DOUBLE_FIELDS(fields) if value]
    if not _BOOL_TEXT.issuperset(_BOOL_FIELDS(fields)):
        raise ValueError("a boolean field is neither 1 nor 0")
    raw = fields[_UNSTRUCT_INDEX]
    if raw:  # as json_shredder.parse_unstruct reads it
        data = json.loads(raw)["data"]
        if not SCHEMA_URI_REGEX.match(data["schema"]) or "data" not in data:
            raise ValueError("unstruct_event is not a self-describing event")


def _level_contexts(fields: list) -> list:
    """The raw level contexts of an event, in order, from `contexts` and `derived_contexts`.
    Raises if the SDK's `transform` would reject the line."""
    _check_fields(fields)
    found = []
    for index in _CONTEXT_FIELD_INDEXES:
        raw = fields[index]
        if not raw:
            continue
        # As json_shredder.parse_contexts reads them (same keys, same Iglu URI
        # pattern), with the JSON parsed only once.
        for context in json.loads(raw)["data"]:
            schema = context["schema"]
            if not SCHEMA_URI_REGEX.match(schema):
                raise ValueError(f"schema {schema!r} is not an Iglu URI")
            data = context["data"]
            if schema.startswith(LEVEL_CONTEXT_PREFIX):
                found.append((schema[len(LEVEL_CONTEXT_PREFIX) :], data))
    return found


def _usable(value) -> bool:
    return isinstance(value, str) and value != ""


def parse_enriched_line(raw: bytes | str, event_time_field: str = DEFAULT_EVENT_TIME_FIELD) -> list:
    """Observations of one enriched TSV line.

    Returns [] for a valid event without any level context (most of a real stream).
    Raises BadLine for a line that does not parse, or whose level contexts are all
    unusable (unsupported version, not an object, null or empty user_id/level_slug).
    A context that is unusable beside a usable one is skipped: the usable one counts.

    A line is valid exactly when the Snowplow SDK's `transform` accepts it: the same
    converters check the same fields (see `_level_contexts`), without building the
    SDK's dictionary of all 131 fields; a rejected line gets the SDK's own messages.
    """
    line = decode_line(raw)
    if not line.strip():
        raise BadLine(UNPARSEABLE, "empty line")
    fields = line.split("\t")
    if len(fields) != len(FIELD_NAMES):
        raise BadLine(UNPARSEABLE, sdk_errors(fields))
    try:
        contexts = _level_contexts(fields)
    except Exception as error:  # noqa: BLE001 - whatever the SDK's converters raise
        raise BadLine(UNPARSEABLE, sdk_errors(fields) or f"contexts: {error!r}") from None
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


class EnrichedRecord(NamedTuple):
    """What a source hands to the parser: the raw line and where it came from."""

    position: str
    data: bytes | str


def line_event_time_ms(data, event_time_field: str) -> int | None:
    """The event time of an enriched line, or None when it has none usable."""
    try:
        fields = decode_line(data).split("\t")
        if len(fields) != len(FIELD_NAMES):
            return None
        return event_time_ms(fields, event_time_field)
    except BadLine:
        return None
