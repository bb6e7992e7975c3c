"""Parsing enriched lines into observations: the contract's Input section."""

import json

import pytest
from snowplow_analytics_sdk.event_transformer import transform

from pipeline.rules.observations import (
    FIELD_INDEX,
    NOT_UTF8,
    UNPARSEABLE,
    UNUSABLE_CONTEXT,
    BadLine,
    Observation,
    parse_enriched_line,
    parse_timestamp_ms,
)
from pipeline.testing.enriched_lines import (
    CONTEXTS_SCHEMA,
    LEVEL_CONTEXT_1_0_1,
    enriched_line,
    level_context,
)

PAGE_CONTEXT = {
    "schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
    "data": {"id": "x"},
}

T = parse_timestamp_ms("2026-11-27 14:00:05.123")


def reason_of(line):
    with pytest.raises(BadLine) as caught:
        parse_enriched_line(line)
    return caught.value.reason, caught.value.detail


def test_timestamps_have_millisecond_precision_in_utc():
    assert parse_timestamp_ms("1970-01-01 00:00:01.5") == 1500
    assert parse_timestamp_ms("2026-11-27T14:00:05.123Z") == T
    assert T % 1000 == 123


def test_a_real_enriched_event_with_the_level_context_is_one_observation():
    line = enriched_line("e-1", T, [level_context("p1", "dungeons-of-kithgard")])
    assert parse_enriched_line(line) == [Observation("p1", "dungeons-of-kithgard", T, "e-1", 0)]
    assert parse_enriched_line(line.encode("utf-8")) == parse_enriched_line(line)


def test_schema_1_0_1_with_its_extra_fields_is_read():
    line = enriched_line("e-2", T, [level_context("p1", "gems", schema=LEVEL_CONTEXT_1_0_1, course="intro")])
    assert parse_enriched_line(line) == [Observation("p1", "gems", T, "e-2", 0)]


def test_a_later_1_0_x_revision_is_read_but_another_model_or_revision_is_not():
    later = level_context("p1", "gems", schema="iglu:com.codecombat/level_context/jsonschema/1-0-7")
    assert [o.level for o in parse_enriched_line(enriched_line("e", T, [later]))] == ["gems"]
    other = level_context("p1", "gems", schema="iglu:com.codecombat/level_context/jsonschema/1-1-0")
    assert reason_of(enriched_line("e", T, [other]))[0] == UNUSABLE_CONTEXT


def test_several_contexts_in_one_event_are_several_observations_in_order():
    line = enriched_line(
        "e-3", T, [level_context("p1", "a"), level_context("p2", "b"), level_context("p1", "c")]
    )
    assert parse_enriched_line(line) == [
        Observation("p1", "a", T, "e-3", 0),
        Observation("p2", "b", T, "e-3", 1),
        Observation("p1", "c", T, "e-3", 2),
    ]


def with_derived_contexts(line: str, contexts: list) -> str:
    fields = line.split("\t")
    fields[FIELD_INDEX["derived_contexts"]] = json.dumps({"schema": CONTEXTS_SCHEMA, "data": contexts})
    return "\t".join(fields)


def test_level_contexts_are_read_from_derived_contexts_as_the_sdk_names_them():
    """The SDK's `transform` keeps one key per context model: a level context in
    derived_contexts (written after contexts) replaces those of contexts."""
    only_derived = with_derived_contexts(enriched_line("e", T), [level_context("p1", "a")])
    both = with_derived_contexts(
        enriched_line("e", T, [level_context("p1", "a"), level_context("p2", "b")]),
        [level_context("p3", "c")],
    )
    unusable_derived = with_derived_contexts(
        enriched_line("e", T, [level_context("p1", "a")]), [level_context(None, "c")]
    )
    other_derived = with_derived_contexts(enriched_line("e", T, [level_context("p1", "a")]), [PAGE_CONTEXT])

    for line in (only_derived, both, other_derived):
        sdk = transform(line).get("contexts_com_codecombat_level_context_1", [])
        assert [(o.player, o.level) for o in parse_enriched_line(line)] == [
            (data["user_id"], data["level_slug"]) for data in sdk
        ]
    assert [o.player for o in parse_enriched_line(both)] == ["p3"]
    assert reason_of(unusable_derived)[0] == UNUSABLE_CONTEXT  # the SDK's key holds only user_id null


def test_a_null_or_empty_context_beside_a_usable_one_is_skipped():
    line = enriched_line(
        "e-4", T, [level_context(None, "a"), level_context("p1", ""), level_context("p2", "b")]
    )
    assert parse_enriched_line(line) == [Observation("p2", "b", T, "e-4", 0)]


@pytest.mark.parametrize("user_id,level_slug", [(None, "a"), ("", "a"), ("p1", None), ("p1", "")])
def test_null_or_empty_ids_go_to_dead_letters(user_id, level_slug):
    reason, detail = reason_of(enriched_line("e", T, [level_context(user_id, level_slug)]))
    assert reason == UNUSABLE_CONTEXT and "user_id" in detail


def test_an_event_without_the_level_context_is_no_observation_and_no_dead_letter():
    assert parse_enriched_line(enriched_line("e", T, [], event="page_view")) == []


def test_a_line_of_131_empty_fields_is_an_event_without_the_context():
    """The SDK takes it (no field is required), so it is counted, not dead-lettered."""
    assert parse_enriched_line("\t" * 130) == []


def test_event_time_field_is_chosen_and_falls_back_to_collector_tstamp():
    line = enriched_line("e", T, [level_context("p1", "a")], dvce_created_ms=T - 7000, derived_ms=T - 3000)
    assert parse_enriched_line(line, "dvce_created_tstamp")[0].event_time_ms == T - 7000
    assert parse_enriched_line(line, "derived_tstamp")[0].event_time_ms == T - 3000
    no_device_time = enriched_line("e", T, [level_context("p1", "a")])
    assert parse_enriched_line(no_device_time, "dvce_created_tstamp")[0].event_time_ms == T


GOOD = enriched_line("e", T, [level_context("p1", "a")])


@pytest.mark.parametrize(
    "line,reason,words",
    [
        (GOOD.rsplit("\t", 1)[0], UNPARSEABLE, "Expected 131 fields, received 130"),
        (GOOD + "\tx", UNPARSEABLE, "Expected 131 fields, received 132"),
        (GOOD.replace('"data":[', '"data":[{', 1), UNPARSEABLE, "contexts"),
        (b"\xff\xfe" + GOOD.encode()[2:], NOT_UTF8, "utf-8"),
        ("", UNPARSEABLE, "empty line"),
        ("   ", UNPARSEABLE, "empty line"),
        (GOOD.replace("\t1\t", "\tyes\t", 1), UNPARSEABLE, "Invalid value yes"),
    ],
)
def test_bad_lines_raise_with_a_clear_reason(line, reason, words):
    got_reason, detail = reason_of(line)
    assert got_reason == reason
    assert words in detail


def test_the_parse_step_counts_lines_observations_and_dead_letters():
    """The counters the live view and the closing line read (lines_read is "records read")."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.rules.observations import EnrichedRecord
    from pipeline.transforms.parse_events import ParseEnrichedEvents

    two = enriched_line("e-2", T, [level_context("p1", "a"), level_context("p2", "b")])
    lines = [two, enriched_line("e-1", T, [level_context("p3", "c")]), enriched_line("e-0", T, []), "junk"]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        parsed = (
            pipeline
            | beam.Create([EnrichedRecord(f"f:{n}", line) for n, line in enumerate(lines, start=1)])
            | ParseEnrichedEvents()
        )
        assert_that(
            parsed[ParseEnrichedEvents.OBSERVATIONS] | beam.Map(lambda o: o.player),
            equal_to(["p1", "p2", "p3"]),
        )
    counters = pipeline.result.metrics().query(MetricsFilter())["counters"]
    counted = {c.key.metric.name: c.committed for c in counters}
    assert counted == {
        "lines_read": 4,
        "lines_without_level_context": 1,
        "observations": 3,
        f"dead_letters_{UNPARSEABLE}": 1,
    }
