"""WriteCounterUpdates against moto's real DynamoDB HTTP server on loopback."""

import threading
import uuid

import apache_beam as beam
import boto3
import pytest
from apache_beam.metrics.metric import MetricsFilter
from botocore.exceptions import ClientError, ConnectionClosedError

from pipeline.rules.ledger import Checkpoint, CounterUpdate
from pipeline.sinks.commit import CommitCheckpoints, commit_ms, due_and_later
from pipeline.sinks.dynamodb import WriteCounterUpdates, create_tables, read_checkpoint
from pipeline.testing.aws_server import REGION

CHECKPOINT_1 = Checkpoint(60_000, (("a", 2),), (("/a", 2),))
CHECKPOINT_2 = Checkpoint(120_000, (("a", 3),), (("/a", 4), ("a/b", 1), ("b/", 1)))
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
    assert due_and_later([CHECKPOINT_1, CHECKPOINT_2], 60_000) == (None, [CHECKPOINT_1, CHECKPOINT_2])
    assert commit_ms(CHECKPOINT_1) == 60_001
    assert due_and_later([CHECKPOINT_1, CHECKPOINT_2], 60_001) == (CHECKPOINT_1, [CHECKPOINT_2])
    assert due_and_later([CHECKPOINT_2, CHECKPOINT_1], 10**9) == (CHECKPOINT_2, [])


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
