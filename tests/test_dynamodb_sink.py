"""WriteCounterUpdates against moto's real DynamoDB HTTP server on loopback."""

import random
import threading
import uuid

import apache_beam as beam
import boto3
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from botocore.exceptions import ClientError, ConnectionClosedError

from pipeline.main import parse_options, prepare_restart
from pipeline.rules.ledger import Checkpoint, CounterUpdate, coalesce_updates, values_in
from pipeline.rules.tables import PIPELINE_NAME
from pipeline.runtime.timestamps import timestamp_to_ms
from pipeline.sinks.commit import CommitCheckpoints, Pending, commit_ms, due_and_later
from pipeline.sinks.dynamodb import (
    SPLIT_NOTE,
    CheckpointUnreadable,
    WriteCounterUpdates,
    claim_settings,
    claim_start,
    create_tables,
    read_checkpoint,
    write_checkpoint,
)
from pipeline.testing.aws_server import REGION

CHECKPOINT_1 = Checkpoint(60_000, {"a": 2}, {"/a": 2})
CHECKPOINT_2 = Checkpoint(120_000, {"a": 3}, {"/a": 4, "a/b": 1, "b/": 1})
UPDATES = [
    CounterUpdate(5_000, (("a", 2),), (("/a", 2),)),
    CounterUpdate(65_000, (("a", 1), ("b", 1)), (("a/b", 1),)),
    CounterUpdate(70_000, (("b", 0),), (("b/", 1),)),
    CounterUpdate(120_000, (("a", 3),), (("/a", 4),)),
]


def client_for(endpoint):
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)


class Tables:
    def __init__(self, endpoint):
        suffix = uuid.uuid4().hex[:8]
        self.endpoint = endpoint
        self.level, self.transitions, self.progress = (
            f"{n}-{suffix}" for n in ("level", "transitions", "progress")
        )
        self.client = client_for(endpoint)
        create_tables(self.client, self.level, self.transitions, self.progress)

    def sink(self, **kwargs):
        return WriteCounterUpdates(
            REGION,
            endpoint_url=self.endpoint,
            level_table=self.level,
            transitions_table=self.transitions,
            **kwargs,
        )

    def commit(self, **kwargs):
        return CommitCheckpoints(REGION, self.endpoint, self.progress, written_before={}, **kwargs)

    def items(self, table, key):
        scanned = self.client.scan(TableName=table, ConsistentRead=True)["Items"]
        return {item[key]["S"]: item for item in scanned}

    def state(self):
        return (
            self.items(self.level, "levelId"),
            self.items(self.transitions, "transitionLevels"),
            self.items(self.progress, "pipeline"),
        )

    def checkpoint(self):
        return read_checkpoint(self.client, self.progress)


@pytest.fixture
def tables(moto_endpoint):
    return Tables(moto_endpoint)


def run(elements, sink):
    """Runs Create(elements) | sink; returns {metric name: committed counter value}.
    Checkpoints are timestamped at their instant, as the ledger emits them."""
    pipeline = beam.Pipeline(runner="FnApiRunner")
    created = pipeline | beam.Create(elements)
    if elements and isinstance(elements[0], Checkpoint):
        created |= beam.Map(lambda c: beam.window.TimestampedValue(c, c.as_of_ms / 1000))
    _ = created | sink
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter())["counters"]
    return {c.key.metric.name: c.committed for c in counters}


SETTINGS = {"timeout_secs": 300, "window_secs": 60, "update_secs": 5, "event_time_field": "collector_tstamp"}


def test_the_settings_are_stored_once_and_other_ones_are_told(tables):
    assert claim_settings(tables.client, tables.progress, SETTINGS) is None  # stored
    assert claim_settings(tables.client, tables.progress, SETTINGS) is None  # the same (or a lost answer)
    assert claim_settings(tables.client, tables.progress, {**SETTINGS, "window_secs": 30}) == SETTINGS
    # A setting the store does not have (added by a later version) is no difference.
    assert claim_settings(tables.client, tables.progress, {**SETTINGS, "later_flag": 1}) is None


def test_the_first_runs_start_is_stored_once(tables):
    first = "AT_TIMESTAMP:2026-12-03T10:00:00Z"
    assert claim_start(tables.client, tables.progress, first) == first
    assert claim_start(tables.client, tables.progress, "AT_TIMESTAMP:2026-12-03T11:00:00Z") == first


def test_a_run_with_other_settings_on_the_same_tables_stops_saying_what_to_change(tables, tmp_path):
    flags = [
        f"--input={tmp_path}/none.tsv",
        "--write_dynamodb",
        f"--aws_endpoint_url={tables.endpoint}",
        f"--level_table={tables.level}",
        f"--transitions_table={tables.transitions}",
        f"--progress_table={tables.progress}",
    ]
    assert prepare_restart(parse_options(flags)) is None  # the first run stores its settings
    with pytest.raises(SystemExit) as stopped:
        prepare_restart(parse_options([*flags, "--window_secs=30", "--timeout_secs=300"]))
    message = str(stopped.value)
    assert "were written with --event_time_field=collector_tstamp --timeout_secs=300" in message
    assert "--update_secs=5 --window_secs=60; this run has --window_secs=30." in message
    assert "Restart with the flags they were written with" in message


def test_create_tables_is_idempotent(tables):
    tables.client.put_item(TableName=tables.level, Item={"levelId": {"S": "kept"}})
    create_tables(tables.client, tables.level, tables.transitions, tables.progress)  # again: left alone
    for name, key in (
        (tables.level, "levelId"),
        (tables.transitions, "transitionLevels"),
        (tables.progress, "pipeline"),
    ):
        description = tables.client.describe_table(TableName=name)["Table"]
        assert description["TableStatus"] == "ACTIVE"
        assert description["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
        assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert "kept" in tables.items(tables.level, "levelId")


def test_writes_items_then_replay_and_reverse_change_nothing(tables):
    assert tables.checkpoint() is None

    first = run(UPDATES, tables.sink())
    levels, transitions, progress = state = tables.state()
    assert {k: (int(v["playerCount"]["N"]), int(v["asOf"]["N"])) for k, v in levels.items()} == {
        "a": (3, 120_000),
        "b": (0, 70_000),
    }
    assert levels["b"]["updatedAt"] == {"S": "1970-01-01T00:01:10Z"}
    assert {k: (int(v["count"]["N"]), int(v["asOf"]["N"])) for k, v in transitions.items()} == {
        "/a": (4, 120_000),
        "a/b": (1, 65_000),
        "b/": (1, 70_000),
    }
    assert "levelFrom" not in transitions["/a"] and transitions["/a"]["levelTo"] == {"S": "a"}
    assert transitions["a/b"]["levelFrom"] == {"S": "a"} and transitions["a/b"]["levelTo"] == {"S": "b"}
    assert transitions["b/"]["levelFrom"] == {"S": "b"} and "levelTo" not in transitions["b/"]
    assert progress == {}  # checkpoints are CommitCheckpoints' job
    assert first["dynamodb_writes"] == 9  # 5 level items, 4 transition items

    replay = run(UPDATES, tables.sink())
    assert tables.state() == state
    assert replay["dynamodb_rejected_repeats"] == 9 and replay.get("dynamodb_writes", 0) == 0

    reverse = run(list(reversed(UPDATES)), tables.sink())
    assert tables.state() == state
    assert reverse["dynamodb_rejected_repeats"] == 9


def test_older_update_after_newer_does_not_move_values_back(tables):
    # One element per pipeline, so the order is certain: newest first, then the older ones.
    run([UPDATES[-1]], tables.sink())
    metrics = run(UPDATES[:-1], tables.sink())
    levels, transitions, _ = tables.state()
    assert int(levels["a"]["playerCount"]["N"]) == 3 and int(transitions["/a"]["count"]["N"]) == 4
    assert metrics["dynamodb_rejected_repeats"] == 3  # levels a (x2), /a (x1)


def test_commit_writes_the_checkpoints_in_order(tables):
    assert tables.checkpoint() is None
    metrics = run([CHECKPOINT_2, CHECKPOINT_1], tables.commit())
    assert tables.checkpoint() == CHECKPOINT_2
    assert 1 <= metrics["dynamodb_checkpoints"] <= 2  # both, or the newest for both
    _, _, progress = tables.state()
    assert progress["level-analytics"]["updatedAt"] == {"S": "1970-01-01T00:02:00Z"}


def test_an_older_checkpoint_never_replaces_a_newer_one(tables):
    run([CHECKPOINT_2], tables.commit())
    metrics = run([CHECKPOINT_1], tables.commit())
    assert tables.checkpoint() == CHECKPOINT_2
    assert metrics["dynamodb_rejected_repeats"] == 1 and metrics.get("dynamodb_writes", 0) == 0


def test_a_checkpoint_is_due_only_once_its_instant_is_passed():
    """Outputs timestamped at the instant itself must be done first: due at instant + 1 ms."""
    first, second = Pending(60_000, CHECKPOINT_1), Pending(120_000, CHECKPOINT_2)
    assert due_and_later([first, second], 60_000) == (None, [first, second])
    assert commit_ms(first) == 60_001
    assert due_and_later([first, second], 60_001) == (CHECKPOINT_1, [second])
    assert due_and_later([second, first], 10**9) == (CHECKPOINT_2, [])
    # Stamped at a later wake (catching up): due only once the writers passed that time.
    late = Pending(75_000, CHECKPOINT_1)
    assert due_and_later([late], 60_001) == (None, [late])


class LostResponseClientFactory:
    """A real client against moto whose first UpdateItem response is lost.

    moto cannot drop a response, so a botocore hook on "after-call" (which runs once
    moto has applied the write and answered) raises ConnectionClosedError in its place:
    to the sink it looks exactly like a connection that died after the request went out.
    """

    def __init__(self, endpoint):
        self._endpoint = endpoint

    def __call__(self):
        client = client_for(self._endpoint)
        lost = []
        lock = threading.Lock()

        def lose_first_response(http_response, **_):
            with lock:
                if lost:
                    return
                lost.append(http_response.status_code)
            raise ConnectionClosedError(endpoint_url=self._endpoint)

        client.meta.events.register("after-call.dynamodb.UpdateItem", lose_first_response)
        return client


def test_lost_response_is_applied_once(tables):
    update = CounterUpdate(5_000, (("a", 7),), ())
    metrics = run([update], tables.sink(client_factory=LostResponseClientFactory(tables.endpoint)))
    levels, _, _ = tables.state()
    assert int(levels["a"]["playerCount"]["N"]) == 7 and int(levels["a"]["asOf"]["N"]) == 5_000
    assert metrics["dynamodb_retries"] == 1
    # The first attempt applied it; the retry found it there (condition failed): a success.
    assert metrics["dynamodb_rejected_repeats"] == 1
    assert metrics.get("dynamodb_writes", 0) == 0


class ThrottlingClient:
    """The real moto client, but UpdateItem on one key is throttled `failures` times first."""

    def __init__(self, real, key_value, failures):
        self._real = real
        self._key_value = key_value
        self._left = failures
        self._lock = threading.Lock()

    def update_item(self, **request):
        if self._key_value in [next(iter(v.values())) for v in request["Key"].values()]:
            with self._lock:
                throttle = self._left > 0
                self._left -= 1
            if throttle:
                error = {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}
                raise ClientError({"Error": error}, "UpdateItem")
        return self._real.update_item(**request)

    def __getattr__(self, name):
        return getattr(self._real, name)


class ThrottlingClientFactory:
    def __init__(self, endpoint, key_value, failures):
        self._endpoint, self._key_value, self._failures = endpoint, key_value, failures

    def __call__(self):
        return ThrottlingClient(client_for(self._endpoint), self._key_value, self._failures)


def test_throttled_write_is_retried(tables):
    update = CounterUpdate(5_000, (("a", 2), ("b", 1)), (("/a", 2), ("/b", 1)))
    sink = tables.sink(client_factory=ThrottlingClientFactory(tables.endpoint, "b", 2))
    metrics = run([update], sink)
    levels, transitions, _ = tables.state()
    assert {k: int(v["playerCount"]["N"]) for k, v in levels.items()} == {"a": 2, "b": 1}
    assert {k: int(v["count"]["N"]) for k, v in transitions.items()} == {"/a": 2, "/b": 1}
    assert metrics["dynamodb_retries"] == 2
    assert metrics["dynamodb_writes"] == 4


def test_permanent_throttling_fails_loudly(tables):
    failing = CounterUpdate(120_000, (("a", 3), ("doomed", 1)), (("/doomed", 1),))
    sink = tables.sink(
        client_factory=ThrottlingClientFactory(tables.endpoint, "doomed", 10**9),
        retry_for_secs=1.0,
    )
    with pytest.raises(
        Exception, match=rf"table '{tables.level}' key levelId=doomed.*ProvisionedThroughputExceeded"
    ):
        run([failing], sink)
    levels, _, _ = tables.state()
    assert "doomed" not in levels


# --- Catching up: each key once per wake, stamped at its own instant ----------------------

BACKLOG = [  # one wake closing four instants: what the ledger emits before coalescing
    CounterUpdate(5_000, (("a", 1),), (("/a", 1),)),
    CounterUpdate(10_000, (("a", 2),), (("/a", 2),)),
    CounterUpdate(65_000, (("a", 1), ("b", 1)), (("a/b", 1),)),
    CounterUpdate(70_000, (("b", 2),), (("/b", 1),)),
]


def values(tables):
    levels, transitions, _ = tables.state()
    return {k: (int(v["playerCount"]["N"]), int(v["asOf"]["N"])) for k, v in levels.items()} | {
        k: (int(v["count"]["N"]), int(v["asOf"]["N"])) for k, v in transitions.items()
    }


def test_a_coalesced_backlog_writes_each_key_once_with_its_latest_value(moto_endpoint):
    every, coalesced = Tables(moto_endpoint), Tables(moto_endpoint)
    run(BACKLOG, every.sink())
    metrics = run(coalesce_updates(BACKLOG), coalesced.sink())
    # The same final tables, each key's asOf the instant of its last change.
    assert (
        values(coalesced)
        == values(every)
        == {
            "a": (1, 65_000),
            "b": (2, 70_000),
            "/a": (2, 10_000),
            "a/b": (1, 65_000),
            "/b": (1, 70_000),
        }
    )
    assert metrics["dynamodb_writes"] == 5 < values_in(BACKLOG) == 9
    # The values it skipped are older: written late (a replay), every one is refused.
    replay = run(BACKLOG, coalesced.sink())
    assert replay["dynamodb_rejected_repeats"] == 9 and replay.get("dynamodb_writes", 0) == 0
    assert values(coalesced) == values(every)


def test_what_the_writer_emits_is_stamped_at_the_instant_it_wrote():
    """The commit barrier's premise (pipeline.sinks.commit): the checkpoint of C waits for
    the writer's output up to C, so each written CounterUpdate must come out stamped at
    its own instant, never later."""

    class FakeTable:
        def update_item(self, **request):
            return {}

    pipeline = beam.Pipeline(runner="FnApiRunner")
    stamped = (
        pipeline
        | beam.Create(coalesce_updates(BACKLOG))
        | beam.Map(lambda u: beam.window.TimestampedValue(u, u.as_of_ms / 1000))
        | WriteCounterUpdates(REGION, client_factory=FakeTable)
        | beam.Map(lambda u, ts=beam.DoFn.TimestampParam: (u.as_of_ms, timestamp_to_ms(ts)))
    )
    assert_that(stamped, equal_to([(10_000, 10_000), (65_000, 65_000), (70_000, 70_000)]))
    pipeline.run().wait_until_finish()


# --- The checkpoint of a big ledger: a head item and its parts ----------------------------


def big_checkpoint(as_of_ms, levels=1000, pairs=50_000, seed=1):
    rng = random.Random(seed)
    names = [f"campaign-level-{i:04d}" for i in range(levels)]
    totals = {}
    while len(totals) < pairs:
        a, b = rng.sample(names + [""], 2)
        totals[f"{a}/{b}"] = rng.randrange(1, 10**6)
    return Checkpoint(as_of_ms, {name: rng.randrange(1, 500) for name in names}, totals)


def part_items(tables):
    _, _, progress = tables.state()
    return {key for key in progress if key != PIPELINE_NAME}


def test_a_ledger_of_fifty_thousand_pairs_round_trips_through_parts(tables):
    big = big_checkpoint(120_000)
    outcomes = write_checkpoint(tables.client, tables.progress, PIPELINE_NAME, big)
    assert tables.checkpoint() == big
    head = tables.state()[2][PIPELINE_NAME]
    assert head["asOf"] == {"N": "120000"} and head["transitionTotals"] == {"S": SPLIT_NOTE}
    assert "levels" not in head and int(head["parts"]["N"]) == len(part_items(tables)) >= 2
    assert len(outcomes) == len(part_items(tables)) + 1 and not any(o.repeat for o in outcomes)


SPLIT = {"inline_bytes": 0, "part_bytes": 5000}  # parts for any ledger, small ones


def test_parts_no_head_names_are_deleted(tables):
    def write(checkpoint, **split):
        return write_checkpoint(tables.client, tables.progress, PIPELINE_NAME, checkpoint, **split)

    write(big_checkpoint(120_000, levels=50, pairs=2000), **SPLIT)
    # A newer checkpoint replaces it and its parts go; an older one changes nothing and leaves nothing.
    newer = big_checkpoint(180_000, levels=50, pairs=2000, seed=2)
    write(newer, **SPLIT)
    assert tables.checkpoint() == newer and len(part_items(tables)) >= 2
    kept = part_items(tables)
    refused = write(big_checkpoint(120_000, levels=50, pairs=2000), **SPLIT)
    assert refused[-1].repeat and tables.checkpoint() == newer and part_items(tables) == kept
    # The same checkpoint again: its parts stay, they are the head's.
    again = write(newer, **SPLIT)
    assert again[-1].repeat and tables.checkpoint() == newer and part_items(tables) == kept
    # Small again: back in the head item alone, as before.
    write(Checkpoint(240_000, {}, {"/a": 1}))
    assert tables.checkpoint() == Checkpoint(240_000, {}, {"/a": 1}) and part_items(tables) == set()


def test_the_commit_stores_a_big_checkpoint(tables):
    big = big_checkpoint(60_000, levels=300, pairs=20_000, seed=3)
    metrics = run([big], tables.commit())
    assert tables.checkpoint() == big and metrics["dynamodb_checkpoints"] == 1
    assert metrics["dynamodb_writes"] == 1 + len(part_items(tables))


def test_a_checkpoint_of_the_single_item_format_is_read(tables):
    tables.client.put_item(
        TableName=tables.progress,
        Item={
            "pipeline": {"S": PIPELINE_NAME},
            "asOf": {"N": "60000"},
            "levels": {"S": '{"a":2}'},
            "transitionTotals": {"S": '{"/a":2}'},
            "updatedAt": {"S": "1970-01-01T00:01:00Z"},
        },
    )
    assert tables.checkpoint() == Checkpoint(60_000, {"a": 2}, {"/a": 2})


class ReplacedWhileReadClient:
    """The real client, but a newer checkpoint is committed just after the reader has read
    the head and before it reads the first part (its parts then go)."""

    def __init__(self, real, table, newer):
        self._real, self._table, self._newer = real, table, newer
        self.replaced = False

    def get_item(self, **request):
        if request["Key"]["pipeline"]["S"] != PIPELINE_NAME and not self.replaced:
            self.replaced = True
            write_checkpoint(self._real, self._table, PIPELINE_NAME, self._newer, **SPLIT)
        return self._real.get_item(**request)


def test_a_checkpoint_replaced_while_read_is_read_again(tables):
    write_checkpoint(tables.client, tables.progress, PIPELINE_NAME, big_checkpoint(60_000, 50, 2000), **SPLIT)
    newer = big_checkpoint(120_000, levels=50, pairs=2000, seed=4)
    client = ReplacedWhileReadClient(tables.client, tables.progress, newer)
    assert read_checkpoint(client, tables.progress) == newer and client.replaced


def test_parts_that_do_not_add_up_fail_loudly(tables):
    write_checkpoint(tables.client, tables.progress, PIPELINE_NAME, big_checkpoint(60_000, 50, 2000), **SPLIT)
    tables.client.update_item(
        TableName=tables.progress,
        Key={"pipeline": {"S": PIPELINE_NAME}},
        UpdateExpression="SET partsDigest = :d",
        ExpressionAttributeValues={":d": {"S": "0" * 32}},
    )
    with pytest.raises(CheckpointUnreadable, match="missing or do not match"):
        tables.checkpoint()


# --- A restart with a ledger split over parts ----------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two runs over 16,000 events on Prism: about 10 minutes on 2 cores
def test_a_restart_from_a_checkpoint_in_parts_gives_the_model(moto_endpoint, tmp_path):
    """Killed (SIGKILL) once it has committed a checkpoint too big for one item, before the
    last fifth of the stream is put, then run again over the whole stream: the tables and
    the history equal the model's."""
    from pipeline.testing.aws_server import make_stream
    from pipeline.testing.many_pairs import kill_after_checkpoint_in_parts_then_restart, many_pairs_stream
    from pipeline.testing.outputs import assert_history_equals_model, assert_tables_equal_model, read_history

    lines, observations = many_pairs_stream()
    name = "many-pairs"
    make_stream(moto_endpoint, name, shards=2)
    kill_after_checkpoint_in_parts_then_restart(
        moto_endpoint, REGION, name, lines, observations, f"{tmp_path}/out"
    )
    assert_history_equals_model(read_history(f"{tmp_path}/out"), observations, 300, 60)
    assert_tables_equal_model(
        client_for(moto_endpoint), f"{name}-transitions", f"{name}-levels", observations
    )
