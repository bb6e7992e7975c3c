"""Hostile enriched lines, one per kind, with what the pipeline does with each: for the
hostile-event tests and bench/hostile.py (README "Hostile events")."""

from pipeline.rules.observations import (
    BAD_TIMESTAMP,
    TOO_LARGE,
    TOO_MANY_CONTEXTS,
    UNPARSEABLE,
    UNUSABLE_CONTEXT,
    Observation,
)
from pipeline.rules.times import format_timestamp_ms, parse_timestamp_ms
from pipeline.testing.enriched_lines import enriched_line, level_context

YEAR_9999_MS = parse_timestamp_ms("9999-12-31 23:59:59.000")
OTHER_SCHEMA = "iglu:com.acme/other_context/jsonschema/1-0-0"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_raw_field(line: str, marker: str, raw_json: str) -> str:
    """`line` with the JSON string `"marker"` replaced by raw JSON text."""
    assert f'"{marker}"' in line
    return line.replace(f'"{marker}"', raw_json, 1)


def hostile_lines(time_ms: int) -> dict:
    """{kind: (line, expected reason or None when it is counted)}: what the README table lists."""
    pad = "x" * (1024 * 1024 - 1500)
    deep = with_raw_field(
        enriched_line("h-deep", time_ms, [level_context("p-deep", "a", extra="DEEP")]), "DEEP", nested(10_000)
    )
    return {
        "record of 1 MiB": (
            enriched_line("h-mib", time_ms, [level_context("p-mib", "a", pad=pad)]),
            TOO_LARGE,
        ),
        "contexts nested 10,000 deep": (deep, UNPARSEABLE),
        "10,000 contexts in one event": (
            enriched_line(
                "h-10k",
                time_ms,
                [{"schema": "iglu:a/b/jsonschema/1-0-0", "data": {}}] * 9_999 + [level_context("p-10k", "a")],
            ),
            TOO_LARGE,
        ),
        "51 contexts in one event": (
            enriched_line(
                "h-51", time_ms, [{"schema": OTHER_SCHEMA, "data": {}}] * 50 + [level_context("p-51", "a")]
            ),
            TOO_MANY_CONTEXTS,
        ),
        "11 level contexts in one event": (
            enriched_line("h-11", time_ms, [level_context(f"p-11-{i}", "a") for i in range(11)]),
            TOO_MANY_CONTEXTS,
        ),
        "user_id of 10 KB": (
            enriched_line("h-uid", time_ms, [level_context("u" * 10_240, "a")]),
            UNUSABLE_CONTEXT,
        ),
        "level_slug of 10 KB": (
            enriched_line("h-slug", time_ms, [level_context("p", "s" * 10_240)]),
            UNUSABLE_CONTEXT,
        ),
        "control characters (ESC, NUL)": (
            enriched_line("h-ctl", time_ms, [level_context("p-ctl", "\x1b[2Jlevel\x00")]),
            UNUSABLE_CONTEXT,
        ),
        "level_slug with '/'": (
            enriched_line("h-slash", time_ms, [level_context("p-sl", "a/b")]),
            UNUSABLE_CONTEXT,
        ),
        "lone surrogate (JSON \\ud800) in an id": (
            enriched_line("h-surrogate", time_ms, [level_context("p-\ud800", "a")]),
            UNUSABLE_CONTEXT,
        ),
        "a date without a time of day": (
            enriched_line("h-date", time_ms, [level_context("p-date", "a")]).replace(
                format_timestamp_ms(time_ms), format_timestamp_ms(time_ms)[:10], 1
            ),
            BAD_TIMESTAMP,
        ),
        "year 1970": (enriched_line("h-1970", 0, [level_context("p-1970", "a")]), BAD_TIMESTAMP),
        "negative time (1969)": (enriched_line("h-neg", -1, [level_context("p-neg", "a")]), BAD_TIMESTAMP),
        "year 9999": (enriched_line("h-9999", YEAR_9999_MS, [level_context("p-9999", "a")]), BAD_TIMESTAMP),
        "HTML in the slug": (
            enriched_line("h-html", time_ms, [level_context("p-html", '<img src=x onerror="alert(1)">')]),
            None,
        ),
        "emoji and RTL marks": (
            enriched_line(
                "h-rtl", time_ms, [level_context("\u200fplayer-\U0001f3ae", "\u202elevel-\U0001f525")]
            ),
            None,
        ),
    }


def shared_event_id_lines(time_ms):
    """The same event_id sent for two players: two observations, one each."""
    lines = [
        enriched_line("same-event-id", time_ms, [level_context("p-shared-1", "gems")]),
        enriched_line("same-event-id", time_ms, [level_context("p-shared-2", "forest")]),
    ]
    observations = [
        Observation("p-shared-1", "gems", time_ms, "same-event-id", 0),
        Observation("p-shared-2", "forest", time_ms, "same-event-id", 0),
    ]
    return lines, observations


def counted_hostile_observations(time_ms):
    return [
        Observation("p-html", '<img src=x onerror="alert(1)">', time_ms, "h-html", 0),
        Observation("\u200fplayer-\U0001f3ae", "\u202elevel-\U0001f525", time_ms, "h-rtl", 0),
    ]
