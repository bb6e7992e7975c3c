"""Hostile events: each one a dead letter with a clear reason, or handled as the contract
says, and none able to stop, slow or swell the pipeline (README "Hostile events").

The rules are tested directly (pipeline.rules.observations); a bounded run through
pipeline.main shows the outcomes end to end (history equal to the model of the good
lines, each hostile line once in the dead letters with its reason); the slow test sends
them through Kinesis on Prism, where a line dated year 9999 or 1970 would otherwise
move or open the event-time machinery.
"""

import json
import os
import subprocess
import sys

import boto3
import pytest

from pipeline.apps.producer import put_records
from pipeline.apps.simulator import SimulationSettings, simulate, write_lines
from pipeline.rules import observations
from pipeline.rules.observations import (
    BAD_TIMESTAMP,
    DEAD_LETTER_MAX_CHARS,
    EARLIEST_EVENT_MS,
    LATE,
    MAX_CLOCK_AHEAD_MS,
    MAX_CONTEXTS,
    MAX_ID_BYTES,
    MAX_JSON_NODES,
    MAX_LEVEL_CONTEXTS,
    MAX_LINE_BYTES,
    TOO_LARGE,
    TOO_MANY_CONTEXTS,
    UNPARSEABLE,
    UNUSABLE_CONTEXT,
    BadLine,
    Observation,
    dead_letter,
    line_event_time_ms,
    parse_enriched_line,
    usable_event_time_ms,
)
from pipeline.rules.times import parse_timestamp_ms
from pipeline.testing.aws_server import REGION, make_stream
from pipeline.testing.enriched_lines import enriched_line, level_context
from pipeline.testing.hostile import (
    YEAR_9999_MS,
    counted_hostile_observations,
    hostile_lines,
    nested,
    shared_event_id_lines,
)
from pipeline.testing.outputs import assert_history_equals_model, read_dead_letters, read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = parse_timestamp_ms("2026-11-27 14:00:05.123")


def reason_of(line, received_ms=None):
    with pytest.raises(BadLine) as caught:
        parse_enriched_line(line, received_ms=received_ms)
    return caught.value.reason, caught.value.detail


# --- Size, depth, count -------------------------------------------------------------------


def test_a_line_over_the_size_limit_is_refused_unread_and_its_dead_letter_is_bounded():
    line = hostile_lines(T)["record of 1 MiB"][0].encode()
    assert len(line) > MAX_LINE_BYTES
    assert reason_of(line)[0] == TOO_LARGE
    assert line_event_time_ms(line, "collector_tstamp") is None  # never moves a watermark
    letter = dead_letter(TOO_LARGE, "big", "shardId-0:1", line)
    assert len(letter.line) == DEAD_LETTER_MAX_CHARS and "cut to its first" in letter.detail
    assert len(letter.to_json()) < DEAD_LETTER_MAX_CHARS + 1024
    just_fits = enriched_line("e", T, [level_context("p", "a", pad="x" * (MAX_LINE_BYTES - 1200))])
    assert len(just_fits.encode()) <= MAX_LINE_BYTES
    assert [o.player for o in parse_enriched_line(just_fits)] == ["p"]


@pytest.mark.parametrize("field", ["context", "unstruct_event"])
def test_json_nested_10000_deep_is_unparseable_not_a_crash(field, monkeypatch):
    if field == "context":
        line = hostile_lines(T)["contexts nested 10,000 deep"][0]
    else:
        good = enriched_line("e", T, [level_context("p", "a")])
        line = good.replace('"data":{}}}', '"data":{"x":' + nested(10_000) + "}}}", 1)
        assert line != good
    reason, detail = reason_of(line)
    assert reason == UNPARSEABLE and f"more than {MAX_JSON_NODES} JSON objects and arrays" in detail
    assert len(dead_letter(reason, detail, "", line).to_json()) < 2 * DEAD_LETTER_MAX_CHARS
    assert line_event_time_ms(line, "collector_tstamp") == T  # its time is fine: it is dated by it
    # Without the count, the parser's recursion limit is the backstop: still a dead letter.
    monkeypatch.setattr(observations, "MAX_JSON_NODES", 10**9)
    assert reason_of(line) == (UNPARSEABLE, "JSON nested deeper than the parser allows")


def test_a_context_with_490_small_objects_is_read():
    line = enriched_line("e", T, [level_context("p", "a", items=[{}] * 490)])
    assert [o.player for o in parse_enriched_line(line)] == ["p"]


def test_too_many_contexts_in_one_event():
    lines = hostile_lines(T)
    assert reason_of(lines["10,000 contexts in one event"][0])[0] == TOO_LARGE
    assert reason_of(lines["51 contexts in one event"][0])[0] == TOO_MANY_CONTEXTS
    assert MAX_CONTEXTS == 50 and MAX_LEVEL_CONTEXTS == 10
    reason, detail = reason_of(lines["11 level contexts in one event"][0])
    assert reason == TOO_MANY_CONTEXTS and "11 level contexts" in detail
    ten = enriched_line("e-10", T, [level_context(f"p{i}", "a") for i in range(10)])
    assert len(parse_enriched_line(ten)) == 10


# --- Names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_id,level_slug,words",
    [
        ("u" * 10_240, "a", f"user_id of 10240 bytes (at most {MAX_ID_BYTES})"),
        ("p", "s" * 10_240, "level_slug of 10240 bytes"),
        ("p", "é" * 129, "level_slug of 258 bytes"),  # counted in UTF-8 bytes, not characters
        ("p", "\x1b[2Jlevel", "control character U+001B"),
        ("p\x00", "a", "user_id contains the control character U+0000"),
        ("p", "line\nbreak", "U+000A"),
        ("p", "del\x7f", "U+007F"),
        ("p", "c1\x85", "U+0085"),
        ("\ud800", "a", "user_id contains the lone surrogate U+D800"),  # JSON "\ud800": ASCII on the wire
        ("p", "level-\udfff", "level_slug contains the lone surrogate U+DFFF"),
        ("p", "a/b", "contains '/'"),
        ("p", "</script>", "contains '/'"),
    ],
)
def test_names_that_cannot_be_keys_are_unusable(user_id, level_slug, words):
    reason, detail = reason_of(enriched_line("e", T, [level_context(user_id, level_slug)]))
    assert reason == UNUSABLE_CONTEXT
    assert words in detail
    assert len(detail) < 400  # a 10 KB name is not copied into the detail


@pytest.mark.parametrize(
    "user_id,level_slug",
    [
        ("p-html", '<img src=x onerror="alert(1)">'),
        ("\u200fplayer-\U0001f3ae", "\u202elevel-\U0001f525"),  # RTL mark, RTL override, emoji
        ("player/with/slashes", "dungeons-of-kithgard"),  # '/' only matters in a slug
        ("u" * MAX_ID_BYTES, "s" * MAX_ID_BYTES),  # at the limit
        ("👩\u200d💻", "zwj-emoji"),  # a zero-width joiner is text, not a control character
    ],
)
def test_any_other_text_is_a_name_like_any_other(user_id, level_slug):
    line = enriched_line("e", T, [level_context(user_id, level_slug)])
    assert parse_enriched_line(line) == [Observation(user_id, level_slug, T, "e", 0)]


def test_an_unusable_name_beside_a_usable_context_is_skipped():
    line = enriched_line("e", T, [level_context("p1", "a/b"), level_context("p2", "b")])
    assert parse_enriched_line(line) == [Observation("p2", "b", T, "e", 0)]


# --- Times -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1970-01-01 00:00:00.000",
        "1969-12-31 23:59:59.999",
        "1999-12-31 23:59:59.999",
        "0001-01-01 00:00:00.000",
    ],
)
def test_times_before_2000_are_a_clock_that_was_not_set(text):
    line = enriched_line("e", T, [level_context("p", "a")]).replace("2026-11-27 14:00:05.123", text, 1)
    reason, detail = reason_of(line)
    assert reason == BAD_TIMESTAMP and "before 2000-01-01T00:00:00Z" in detail
    assert line_event_time_ms(line, "collector_tstamp") is None
    assert usable_event_time_ms(EARLIEST_EVENT_MS) == EARLIEST_EVENT_MS


def test_times_after_the_record_was_received_beyond_clock_skew_are_refused():
    line = enriched_line("e", YEAR_9999_MS, [level_context("p", "a")])
    reason, detail = reason_of(line, received_ms=T)
    assert reason == BAD_TIMESTAMP and "9999-12-31T23:59:59Z" in detail and "after the record" in detail
    assert line_event_time_ms(line, "collector_tstamp", T) is None
    ahead = enriched_line("e", T + MAX_CLOCK_AHEAD_MS, [level_context("p", "a")])
    assert parse_enriched_line(ahead, received_ms=T)[0].event_time_ms == T + MAX_CLOCK_AHEAD_MS
    too_far = enriched_line("e", T + MAX_CLOCK_AHEAD_MS + 1, [level_context("p", "a")])
    assert reason_of(too_far, received_ms=T)[0] == BAD_TIMESTAMP


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-11-27T15:00:05.123+01:00", T),
        ("2026-11-27 09:00:05.123-05:00", T),
        ("2026-11-27T14:00:05.123Z", T),
        ("2026-11-27 14:00:05.123456", T),  # microseconds: the millisecond they fall in
    ],
)
def test_times_with_offsets_are_read_in_utc(text, expected):
    line = enriched_line("e", T, [level_context("p", "a")]).replace("2026-11-27 14:00:05.123", text, 1)
    assert parse_enriched_line(line, received_ms=T)[0].event_time_ms == expected


@pytest.mark.parametrize(
    "text",
    [
        "10000-01-01 00:00:00.000",
        "2026-13-01 00:00:00.000",
        "yesterday",
        "9" * 400,
        # Python's fromisoformat reads these as an instant; no Snowplow clock writes them.
        "2026-11-27",
        "2026-11-27T14",
        "2026-11-27 14:00",
        "2026-W48-5 14:00:05.123",
        "20261127T140005",
    ],
)
def test_unreadable_times_are_bad_timestamps(text):
    line = enriched_line("e", T, [level_context("p", "a")]).replace("2026-11-27 14:00:05.123", text, 1)
    reason, detail = reason_of(line)
    assert reason == BAD_TIMESTAMP and len(detail) < 300


def test_two_devices_of_one_player_with_skewed_clocks():
    """collector_tstamp (the default) is the collector's clock: the devices' skew does not
    matter. With --event_time_field dvce_created_tstamp, a device an hour ahead of when its
    event arrived is counted at its own time, as the contract says; one more than a day ahead
    is refused; one an hour behind is an ordinary (possibly late) event."""
    hour_ahead = enriched_line("e-0", T, [level_context("p", "a")], dvce_created_ms=T + 3_600_000)
    assert parse_enriched_line(hour_ahead, "dvce_created_tstamp", received_ms=T + 200)[0].event_time_ms == (
        T + 3_600_000
    )
    ahead = enriched_line(
        "e-1", T, [level_context("p", "a")], dvce_created_ms=T + 200 + MAX_CLOCK_AHEAD_MS + 1
    )
    behind = enriched_line("e-2", T + 1000, [level_context("p", "b")], dvce_created_ms=T + 1000 - 3_600_000)
    assert [o.event_time_ms for o in parse_enriched_line(ahead, received_ms=T + 200)] == [T]
    assert [o.event_time_ms for o in parse_enriched_line(behind, received_ms=T + 1200)] == [T + 1000]
    with pytest.raises(BadLine) as caught:
        parse_enriched_line(ahead, "dvce_created_tstamp", received_ms=T + 200)
    assert caught.value.reason == BAD_TIMESTAMP
    assert parse_enriched_line(behind, "dvce_created_tstamp", received_ms=T + 1200)[0].event_time_ms == (
        T + 1000 - 3_600_000
    )


# --- End to end, bounded -------------------------------------------------------------------------


def mixed_stream(seed):
    """A small simulated stream with every hostile kind put in its middle; the observations
    the outputs must equal, and {kind: expected reason} of the hostile lines."""
    stream = simulate(SimulationSettings(seed=seed, players=40, duration_secs=600, malformed_share=0))
    # Right after a line of the middle, at its event time: on time wherever it is read.
    middle = next(i for i in range(len(stream.lines) // 2, len(stream.lines)) if stream.line_observations[i])
    time_ms = stream.line_observations[middle][0].event_time_ms
    hostile = hostile_lines(time_ms)
    shared, shared_observations = shared_event_id_lines(time_ms)
    lines = list(stream.lines)
    lines[middle + 1 : middle + 1] = [line.encode() for line, _ in hostile.values()] + [
        line.encode() for line in shared
    ]
    observations = stream.observations + counted_hostile_observations(time_ms) + shared_observations
    return lines, observations, {kind: reason for kind, (_, reason) in hostile.items() if reason}


def dead_letter_reasons(letters: dict) -> dict:
    """{event_id or position: reason} of the dead letters."""
    found = {}
    for lines in letters.values():
        for text in lines:
            letter = json.loads(text)
            fields = letter["line"].split("\t")
            key = fields[6] if len(fields) > 6 else letter["position"]
            found[key] = letter["reason"]
    return found


EXPECTED_BY_EVENT_ID = {
    "h-mib": TOO_LARGE,
    "h-deep": UNPARSEABLE,
    "h-10k": TOO_LARGE,
    "h-51": TOO_MANY_CONTEXTS,
    "h-11": TOO_MANY_CONTEXTS,
    "h-uid": UNUSABLE_CONTEXT,
    "h-slug": UNUSABLE_CONTEXT,
    "h-ctl": UNUSABLE_CONTEXT,
    "h-slash": UNUSABLE_CONTEXT,
    "h-surrogate": UNUSABLE_CONTEXT,
    "h-date": BAD_TIMESTAMP,
    "h-1970": BAD_TIMESTAMP,
    "h-neg": BAD_TIMESTAMP,
    "h-9999": BAD_TIMESTAMP,
}


def test_every_hostile_kind_is_covered_by_the_expectations():
    kinds = hostile_lines(T)
    assert sorted(reason for _, reason in kinds.values() if reason) == sorted(EXPECTED_BY_EVENT_ID.values())


def test_a_replay_with_hostile_lines_counts_the_rest_exactly(tmp_path):
    lines, observations, _ = mixed_stream(seed=11)
    write_lines(str(tmp_path / "events.tsv"), lines)
    out, bad = tmp_path / "out", tmp_path / "bad"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.main",
            f"--input={tmp_path}/events.tsv",
            f"--snapshot_path={out}",
            f"--dead_letter_path={bad}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_history_equals_model(read_history(str(out)), observations, 300, 60)
    letters = read_dead_letters(str(bad))
    assert dead_letter_reasons(letters) == EXPECTED_BY_EVENT_ID
    # Lines without a usable time are undated (a file line has no arrival to place it by).
    undated = [json.loads(text)["reason"] for text in letters.get("undated.jsonl", [])]
    assert sorted(undated) == sorted(
        r for r in EXPECTED_BY_EVENT_ID.values() if r in (TOO_LARGE, BAD_TIMESTAMP)
    )
    assert max(len(text) for lines_ in letters.values() for text in lines_) < 2 * DEAD_LETTER_MAX_CHARS


# --- End to end, streaming: the event-time machinery --------------------------------------------


@pytest.mark.slow
def test_hostile_records_in_a_stream_neither_move_nor_open_the_watermark(moto_endpoint, tmp_path):
    """Through Kinesis on Prism, with DynamoDB: a record dated 9999 in the middle of the
    stream would move its shard's watermark to 9999 and make every later record late; one
    dated 1970 as a shard's first record would open windows from 1970; a 10 KB slug would
    be refused by DynamoDB as a key. None of that happens: no record is late, the outputs
    equal the model, each hostile record is one dead letter with its reason."""
    name = "hostile-stream"
    lines, observations, _ = mixed_stream(seed=12)
    first_1970 = enriched_line("h-first-1970", 0, [level_context("p-first", "a")]).encode()
    client = make_stream(moto_endpoint, name, shards=2)
    put_records(client, name, [first_1970] * 1)  # before anything else, in one shard
    put_records(client, name, lines)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    s3.create_bucket(Bucket=name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.main",
            f"--stream_name={name}",
            f"--aws_endpoint_url={moto_endpoint}",
            f"--aws_region={REGION}",
            "--initial_position=TRIM_HORIZON",
            "--max_out_of_orderness_secs=10",
            "--stop_when_idle_secs=3",
            f"--snapshot_path=s3://{name}/snapshots",
            f"--dead_letter_path=s3://{name}/dead-letters",
            "--write_dynamodb",
            "--create_tables",
            f"--level_table={name}-levels",
            f"--transitions_table={name}-transitions",
            f"--progress_table={name}-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_history_equals_model(read_history(f"s3://{name}/snapshots", s3), observations, 300, 60)
    reasons = dead_letter_reasons(read_dead_letters(f"s3://{name}/dead-letters", s3))
    assert LATE not in reasons.values(), "a record was made late"
    assert reasons == {**EXPECTED_BY_EVENT_ID, "h-first-1970": BAD_TIMESTAMP}
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name=REGION)
    levels = {item["levelId"]["S"] for item in dynamodb.scan(TableName=f"{name}-levels")["Items"]}
    assert '<img src=x onerror="alert(1)">' in levels and "\u202elevel-\U0001f525" in levels
