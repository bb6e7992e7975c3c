"""Reading back what the pipeline published, and comparing it with the reference model:
for the tests and the benchmarks. A snapshot or dead-letter path is a directory or
s3://bucket/prefix (read with the given S3 client)."""

import json
import os

from pipeline.rules.snapshot_format import is_partial, update_id
from pipeline.rules.times import iso_utc
from pipeline.testing.reference_model import model_snapshots, model_transition_totals, snapshot_as_files


def _split_s3(path: str) -> tuple[str, str]:
    bucket, _, prefix = path[len("s3://") :].partition("/")
    return bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""


def read_objects(path: str, folder: str, s3=None) -> dict:
    """{name: bytes} of the objects directly under path/folder (sorted by name)."""
    if path.startswith("s3://"):
        bucket, prefix = _split_s3(path)
        found = {}
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}{folder}")
        for page in pages:
            for item in page.get("Contents", []):
                found[item["Key"].rsplit("/", 1)[1]] = s3.get_object(Bucket=bucket, Key=item["Key"])[
                    "Body"
                ].read()
        return dict(sorted(found.items()))
    directory = os.path.join(path, folder)
    if not os.path.isdir(directory):
        return {}
    found = {}
    for name in sorted(n for n in os.listdir(directory) if not is_partial(n)):
        with open(os.path.join(directory, name), "rb") as handle:
            found[name] = handle.read()
    return found


def read_history(snapshot_path: str, s3=None) -> dict:
    """{window_end_iso: (levels document, transitions document)} of the history objects.
    A window with only one of its two documents fails as a mismatch (the pair is written
    one after the other, so a reader polling a running job can see one alone)."""
    history, unpaired = read_history_and_unpaired(snapshot_path, s3)
    assert not unpaired, f"history windows with one of their two documents only: {unpaired}"
    return history


def read_history_and_unpaired(snapshot_path: str, s3=None) -> tuple[dict, list]:
    """(read_history's windows with both documents, the names of those with one only)."""
    levels = read_objects(snapshot_path, "history/levels/", s3)
    transitions = read_objects(snapshot_path, "history/transitions/", s3)
    unpaired = sorted(set(levels) ^ set(transitions))
    history = {
        name[: -len(".json")]: (json.loads(body), json.loads(transitions[name]))
        for name, body in levels.items()
        if name in transitions
    }
    return history, unpaired


def read_history_bytes(snapshot_path: str, s3=None) -> dict:
    """{"levels/<name>" or "transitions/<name>": bytes}: for comparing two runs byte for byte."""
    return {
        f"{kind}/{name}": body
        for kind in ("levels", "transitions")
        for name, body in read_objects(snapshot_path, f"history/{kind}/", s3).items()
    }


def read_dead_letters(dead_letter_path: str, s3=None) -> dict:
    """{object name: [JSON line, ...]} of the dead-letter objects."""
    return {
        name: body.decode("utf-8").splitlines()
        for name, body in read_objects(dead_letter_path, "", s3).items()
    }


def read_dead_letter_lines(dead_letter_path: str, s3=None) -> list:
    """Every line of every dead-letter object."""
    return [line for lines in read_dead_letters(dead_letter_path, s3).values() for line in lines]


def read_tables(dynamodb, transitions_table: str, level_table: str) -> tuple[dict, dict]:
    """({"from/to": count} of the transitions table, {level: playerCount} of the level table)."""
    scan = dynamodb.get_paginator("scan")
    transitions = [i for page in scan.paginate(TableName=transitions_table) for i in page["Items"]]
    levels = [i for page in scan.paginate(TableName=level_table) for i in page["Items"]]
    return (
        {item["transitionLevels"]["S"]: int(item["count"]["N"]) for item in transitions},
        {item["levelId"]["S"]: int(item["playerCount"]["N"]) for item in levels},
    )


def assert_history_equals_model(history, observations, timeout_secs, window_secs):
    """Every history window, in the original app's shapes, equals the reference model's."""
    expected = model_snapshots(observations, timeout_secs, window_secs)
    assert sorted(history) == [iso_utc(end) for end in sorted(expected)]
    for end, (levels, transitions) in expected.items():
        level_doc, transition_doc = history[iso_utc(end)]
        want_levels, want_transitions = snapshot_as_files(levels, transitions)
        assert level_doc["level_player_counts"] == want_levels, iso_utc(end)
        assert transition_doc["transitions"] == want_transitions, iso_utc(end)
        for doc in (level_doc, transition_doc):
            assert doc["update_time"] == doc["window_end"] == iso_utc(end)
            assert doc["window_start"] == iso_utc(end - window_secs * 1000)
            assert doc["update_interval_secs"] == window_secs
            assert doc["update_id"] == update_id(end - window_secs * 1000, end)


def assert_tables_equal_model(dynamodb, transitions_table, level_table, observations, timeout_secs=300):
    """After the end of input: the model's transition totals (with levelFrom/levelTo), and
    every level back at 0."""
    totals, levels = read_tables(dynamodb, transitions_table, level_table)
    assert totals == model_transition_totals(observations, timeout_secs)
    assert levels and set(levels.values()) == {0}, levels
    for page in dynamodb.get_paginator("scan").paginate(TableName=transitions_table):
        for item in page["Items"]:
            from_level, to_level = item["transitionLevels"]["S"].split("/")
            assert item.get("levelFrom", {}).get("S") == (from_level or None)
            assert item.get("levelTo", {}).get("S") == (to_level or None)


def assert_outputs_equal_model(
    s3, dynamodb, bucket, tables, observations, malformed, timeout_secs, window_secs
):
    """The whole contract once the input has ended: every history window under
    s3://bucket/snapshots, the `tables` (transitions, levels) as
    `assert_tables_equal_model` says, and under s3://bucket/dead-letters each of the
    `malformed` lines once (None: only that no line is there twice)."""
    history = read_history(f"s3://{bucket}/snapshots", s3)
    assert_history_equals_model(history, observations, timeout_secs, window_secs)
    assert_tables_equal_model(dynamodb, *tables, observations, timeout_secs)
    dead = read_dead_letter_lines(f"s3://{bucket}/dead-letters", s3)
    assert len(dead) == len(set(dead)), f"{len(dead) - len(set(dead))} dead letters written twice"
    assert malformed is None or len(dead) == malformed, (
        f"dead letters {len(dead)}, malformed lines {malformed}"
    )
    return history
