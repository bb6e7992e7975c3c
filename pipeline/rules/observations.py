"""Rules for turning one Snowplow enriched event into level observations.

Plain Python, no Beam: `parse_enriched_line` is what `ParseEnrichedEvents` calls
for every record, and what the tests call directly.

Hostile input
-------------
A stream is written by many clients; some lines are broken or made to hurt. Each limit
below turns one into a dead letter with a reason instead of a cost (README "Hostile
events" has the table of what was tried and what happens):

* a line over MAX_LINE_BYTES is `too_large`, rejected before it is decoded (Kinesis
  takes records up to 1 MiB; real enriched events are a few KiB);
* more than MAX_CONTEXTS contexts, or more than MAX_LEVEL_CONTEXTS level contexts, in
  one event is `too_many_contexts` (each level context is one observation downstream:
  one event must not cost the pipeline what thousands of events cost);
* a JSON field with more than MAX_JSON_NODES objects and arrays is `unparseable`,
  found by counting its brackets before it is parsed (so JSON nested 10,000 deep costs
  a count, not a thousand levels of recursion and a RecursionError, which is still
  caught should it come);
* a user_id or level_slug longer than MAX_ID_BYTES (a DynamoDB key holds at most 2,048
  bytes, and "from/to" holds two slugs), with a control character (it would drive the
  terminal of whoever reads it) or a lone surrogate (the JSON escape "\\ud800": no UTF-8
  holds it, so no key, coder or JSON object downstream could), or a level_slug
  containing "/" (the separator of the "from/to" keys: "a/b" would be read back as
  another transition) is `unusable_context`;
  any other text (HTML, emoji, right-to-left marks) is a name like any other, stored and
  published as it is: showing it safely is the reader's job;
* an event time before EARLIEST_EVENT_MS (a clock never set: 1970, negative) or more
  than MAX_CLOCK_AHEAD_MS after the record was received (its Kinesis arrival, or the
  time a file line is read: year 9999) is `bad_timestamp`. Such a time cannot be used:
  one event dated 9999 would move its shard's watermark to 9999 and make every later
  record late, and one dated 1970 would open fifty years of windows. The Kinesis source
  applies the same rule (`line_event_time_ms`, given the same arrival) before it lets a
  record move the watermark.
* a dead letter keeps at most DEAD_LETTER_MAX_CHARS of its line and
  DEAD_LETTER_MAX_DETAIL_CHARS of its detail, so a flood of huge lines cannot fill the
  memory of the window that groups them (its position names the record in full).
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

from pipeline.rules.times import iso_utc, parse_timestamp_ms

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
TOO_LARGE = "too_large"
TOO_MANY_CONTEXTS = "too_many_contexts"
LATE = "late"

# The limits of the module docstring ("Hostile input").
MAX_LINE_BYTES = 128 * 1024  # real enriched events are a few KiB; many derived contexts, tens
MAX_CONTEXTS = 50
MAX_LEVEL_CONTEXTS = 10
MAX_ID_BYTES = 256
MAX_JSON_NODES = 500  # objects and arrays in one JSON field: 50 contexts take about 100
EARLIEST_EVENT_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
# A day: clocks that disagree (a device's own with --event_time_field
# dvce_created_tstamp, a replayed or generated backlog dated ahead of when it was put)
# are still counted as the contract says; only a time no clock could give is refused.
# A record dated A ms ahead of the others in its shard still makes the records after it
# late for A ms, as the contract's watermark says: README "Known limits".
MAX_CLOCK_AHEAD_MS = 24 * 3600 * 1000
DEAD_LETTER_MAX_CHARS = 8 * 1024
DEAD_LETTER_MAX_DETAIL_CHARS = 1024

_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
# A JSON escape such as "\ud800" reads as a lone surrogate: no UTF-8 can hold it, so no
# coder, table or JSON object downstream could either.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # Unicode category Cs


def usable_event_time_ms(time_ms: int, received_ms: int | None = None) -> int:
    """`time_ms` if it can be an event's time, else BadLine(bad_timestamp): not before
    EARLIEST_EVENT_MS, and, when the time the record was received is known, not more
    than MAX_CLOCK_AHEAD_MS after it."""
    if time_ms < EARLIEST_EVENT_MS:
        raise BadLine(
            BAD_TIMESTAMP,
            f"event time {_iso_or_ms(time_ms)} is before {iso_utc(EARLIEST_EVENT_MS)}: a clock that was not set",
        )
    if received_ms is not None and time_ms > received_ms + MAX_CLOCK_AHEAD_MS:
        raise BadLine(
            BAD_TIMESTAMP,
            f"event time {_iso_or_ms(time_ms)} is {(time_ms - received_ms) / 1000:.0f} s after the record "
            f"was received ({iso_utc(received_ms)}); at most {MAX_CLOCK_AHEAD_MS / 1000:g} s of clock skew is allowed",
        )
    return time_ms


def _iso_or_ms(time_ms: int) -> str:
    try:
        return iso_utc(time_ms)
    except (OverflowError, ValueError):
        return f"{time_ms} ms"


def event_time_ms(
    fields: list, event_time_field: str = DEFAULT_EVENT_TIME_FIELD, received_ms: int | None = None
) -> int:
    """The contract's event time: the chosen field, else `collector_tstamp`, if usable
    (`usable_event_time_ms`)."""
    raw = fields[FIELD_INDEX[event_time_field]] or fields[FIELD_INDEX[DEFAULT_EVENT_TIME_FIELD]]
    if not raw:
        raise BadLine(BAD_TIMESTAMP, f"{event_time_field} and collector_tstamp are both empty")
    try:
        time_ms = parse_timestamp_ms(raw)
    except (ValueError, OverflowError) as error:
        raise BadLine(BAD_TIMESTAMP, f"cannot read timestamp {raw[:64]!r}: {error}") from None
    return usable_event_time_ms(time_ms, received_ms)


def check_size(raw: bytes | str) -> None:
    """BadLine(too_large) for a line over MAX_LINE_BYTES, before anything reads it."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", errors="surrogatepass"))
    if size > MAX_LINE_BYTES:
        raise BadLine(TOO_LARGE, f"{size} bytes; a line may have at most {MAX_LINE_BYTES}")


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


def _json(raw: str, field: str):
    """json.loads, refusing a field with more than MAX_JSON_NODES objects and arrays
    (brackets in strings count too: it only errs towards refusing)."""
    if raw.count("{") + raw.count("[") > MAX_JSON_NODES:
        raise BadLine(UNPARSEABLE, f"{field}: more than {MAX_JSON_NODES} JSON objects and arrays")
    return json.loads(raw)


def _check_fields(fields: list) -> None:
    """Raises if the SDK's `transform` would reject a field other than the contexts."""
    [int(value) for value in _INT_FIELDS(fields) if value]
    [float(value) for value in _DOUBLE_FIELDS(fields) if value]
    if not _BOOL_TEXT.issuperset(_BOOL_FIELDS(fields)):
        raise ValueError("a boolean field is neither 1 nor 0")
    raw = fields[_UNSTRUCT_INDEX]
    if raw:  # as json_shredder.parse_unstruct reads it
        data = _json(raw, "unstruct_event")["data"]
        if not SCHEMA_URI_REGEX.match(data["schema"]) or "data" not in data:
            raise ValueError("unstruct_event is not a self-describing event")


def _level_contexts(fields: list) -> list:
    """The raw level contexts of an event, in order, as the SDK's `transform` names them:
    from `contexts`, and from `derived_contexts`, whose level contexts of a model replace
    those of `contexts` (the SDK keeps one key per model, contexts_..._level_context_1, and
    the later field's list overwrites the earlier's). Raises if `transform` would reject
    the line; BadLine when it has more contexts than the limits allow."""
    _check_fields(fields)
    found = []
    seen = 0
    for index in _CONTEXT_FIELD_INDEXES:
        raw = fields[index]
        if not raw:
            continue
        # As json_shredder.parse_contexts reads them (same keys, same Iglu URI
        # pattern), with the JSON parsed only once.
        contexts = _json(raw, FIELD_NAMES[index])["data"]
        seen += len(contexts)
        if seen > MAX_CONTEXTS:
            raise BadLine(TOO_MANY_CONTEXTS, f"more than {MAX_CONTEXTS} contexts in one event")
        in_field = []
        for context in contexts:
            schema = context["schema"]
            if not SCHEMA_URI_REGEX.match(schema):
                raise ValueError(f"schema {schema!r} is not an Iglu URI")
            data = context["data"]
            if schema.startswith(LEVEL_CONTEXT_PREFIX):
                in_field.append((schema[len(LEVEL_CONTEXT_PREFIX) :], data))
        replaced = {_model(version) for version, _ in in_field}
        found = [context for context in found if _model(context[0]) not in replaced] + in_field
    if len(found) > MAX_LEVEL_CONTEXTS:
        raise BadLine(
            TOO_MANY_CONTEXTS,
            f"{len(found)} level contexts in one event; at most {MAX_LEVEL_CONTEXTS} are read",
        )
    return found


def _model(version: str) -> str:
    """'1' of '1-0-0': the part of a version the SDK's context key carries."""
    return version.split("-", 1)[0]


def _usable(value) -> bool:
    return isinstance(value, str) and value != ""


def id_problem(name: str, value: str) -> str | None:
    """Why a user_id or level_slug cannot be a key (None: it can). See the module docstring."""
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > MAX_ID_BYTES:
        return f"{name} of {size} bytes (at most {MAX_ID_BYTES})"
    control = _CONTROL_CHARACTER.search(value)
    if control:
        return f"{name} contains the control character U+{ord(control.group()):04X}"
    surrogate = _LONE_SURROGATE.search(value)
    if surrogate:
        return f"{name} contains the lone surrogate U+{ord(surrogate.group()):04X}, which UTF-8 cannot hold"
    if name == "level_slug" and "/" in value:
        return f"level_slug {value!r} contains '/', the separator of transition keys"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _sdk_errors_or(fields: list, fallback: str) -> str:
    try:
        return sdk_errors(fields) or fallback
    except RecursionError:
        return "JSON nested deeper than the parser allows"


def parse_enriched_line(
    raw: bytes | str, event_time_field: str = DEFAULT_EVENT_TIME_FIELD, received_ms: int | None = None
) -> list:
    """Observations of one enriched TSV line; `received_ms`, when known, is when the
    line was received (its Kinesis arrival, or when a file line was read).

    Returns [] for a valid event without any level context (most of a real stream).
    Raises BadLine for a line that does not parse, or whose level contexts are all
    unusable (unsupported version, not an object, null or empty user_id/level_slug).
    A context that is unusable beside a usable one is skipped: the usable one counts.

    A line is valid exactly when the Snowplow SDK's `transform` accepts it: the same
    converters check the same fields (see `_level_contexts`), without building the
    SDK's dictionary of all 131 fields; a rejected line gets the SDK's own messages.
    On top of that, the limits of the module docstring ("Hostile input") apply.
    """
    check_size(raw)
    line = decode_line(raw)
    if not line.strip(" "):  # not strip(): 131 empty fields are 130 tabs, a valid event
        raise BadLine(UNPARSEABLE, "empty line")
    fields = line.split("\t")
    if len(fields) != len(FIELD_NAMES):
        raise BadLine(UNPARSEABLE, sdk_errors(fields))
    try:
        contexts = _level_contexts(fields)
    except BadLine:
        raise
    except RecursionError:  # a backstop: MAX_JSON_NODES keeps JSON shallower than this
        raise BadLine(UNPARSEABLE, "JSON nested deeper than the parser allows") from None
    except Exception as error:  # noqa: BLE001 - whatever the SDK's converters raise
        raise BadLine(UNPARSEABLE, _sdk_errors_or(fields, f"contexts: {error!r}")) from None
    if not contexts:
        return []

    observations, problems = [], []
    for version, data in contexts:
        if not SUPPORTED_LEVEL_CONTEXT.match(version):
            problems.append(f"unsupported level_context version {version[:64]}")
        elif not isinstance(data, dict):
            problems.append("level_context data is not an object")
        elif not (_usable(data.get("user_id")) and _usable(data.get("level_slug"))):
            problems.append(
                "level_context without user_id or level_slug "
                f"(user_id={_short(data.get('user_id'))}, level_slug={_short(data.get('level_slug'))})"
            )
        else:
            problem = id_problem("user_id", data["user_id"]) or id_problem("level_slug", data["level_slug"])
            if problem:
                problems.append(problem)
            else:
                observations.append((data["user_id"], data["level_slug"]))
    if not observations:
        raise BadLine(UNUSABLE_CONTEXT, "; ".join(problems))

    time_ms = event_time_ms(fields, event_time_field, received_ms)
    event_id = fields[FIELD_INDEX["event_id"]]
    return [
        Observation(player, level, time_ms, event_id, index)
        for index, (player, level) in enumerate(observations)
    ]


class DeadLetter(NamedTuple):
    """A record the pipeline could not use, with why and where it came from. Build it
    with `dead_letter` (which bounds its size)."""

    reason: str
    detail: str
    position: str  # "file.tsv:12", "shardId-000000000001:4959...", or "" when unknown
    line: str  # the raw line (undecodable bytes escaped)
    event_time_ms: int | None = None

    def to_json(self) -> str:
        return json.dumps(self._asdict(), ensure_ascii=False, sort_keys=True)


def printable(raw: bytes | str, max_chars: int | None = None) -> str:
    """The line as text (undecodable bytes escaped), cut to `max_chars` when given."""
    if max_chars is not None and len(raw) > max_chars:
        raw = raw[:max_chars]
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="backslashreplace")
    return raw


def dead_letter(reason: str, detail: str, position: str, raw: bytes | str, event_time_ms=None) -> DeadLetter:
    """A DeadLetter of bounded size: the line cut to DEAD_LETTER_MAX_CHARS (a longer one
    says so in its detail), the detail to DEAD_LETTER_MAX_DETAIL_CHARS."""
    if len(detail) > DEAD_LETTER_MAX_DETAIL_CHARS:
        detail = detail[:DEAD_LETTER_MAX_DETAIL_CHARS] + "..."
    if len(raw) > DEAD_LETTER_MAX_CHARS:
        detail += f" (line cut to its first {DEAD_LETTER_MAX_CHARS} of {len(raw)} characters or bytes)"
    return DeadLetter(reason, detail, position, printable(raw, DEAD_LETTER_MAX_CHARS), event_time_ms)


class EnrichedRecord(NamedTuple):
    """What a source hands to the parser: the raw line, where it came from, and when it
    was received (epoch ms of its Kinesis arrival; None from a file)."""

    position: str
    data: bytes | str
    received_ms: int | None = None


def line_event_time_ms(data, event_time_field: str, received_ms: int | None = None) -> int | None:
    """The event time of an enriched line, or None when it has none usable (the same
    rule as the parser's, given the same `received_ms`)."""
    try:
        check_size(data)
        fields = decode_line(data).split("\t")
        if len(fields) != len(FIELD_NAMES):
            return None
        return event_time_ms(fields, event_time_field, received_ms)
    except BadLine:
        return None
