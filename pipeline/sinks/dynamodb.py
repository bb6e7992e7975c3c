"""WriteCounterUpdates: the ledger's CounterUpdates to DynamoDB, effectively once (the
tables: pipeline.rules.tables).

Every write is a conditional UpdateItem of an absolute value ("asOf < :as_of"), so no
write can apply twice or move a value back in time. BatchWriteItem takes no condition
and is not used.
"""

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import apache_beam as beam
from botocore.exceptions import ClientError

from pipeline.aws import RETRY_FOR_SECS, ClientFactory, call_with_retries, error_code
from pipeline.rules.ledger import Checkpoint, CounterUpdate
from pipeline.rules.tables import (
    LEVEL_KEY,
    LEVEL_TABLE,
    PIPELINE_NAME,
    PROGRESS_KEY,
    TRANSITION_KEY,
    TRANSITIONS_TABLE,
)
from pipeline.rules.times import iso_utc
from pipeline.runtime import metrics

_LOG = logging.getLogger(__name__)

NEWER_ONLY = "attribute_not_exists(asOf) OR asOf < :as_of"
REPEAT = "ConditionalCheckFailedException"
WRITE_WORKERS = 8


class _Write(NamedTuple):
    """One conditional UpdateItem."""

    table: str
    key: dict
    sets: dict  # attribute name -> DynamoDB typed value, e.g. {"playerCount": {"N": "3"}}
    as_of_ms: int

    def describe(self) -> str:
        return f"table {self.table!r} key {', '.join(f'{k}={next(iter(v.values()))}' for k, v in self.key.items())}"

    def request(self) -> dict:
        names = {}
        values = {":as_of": {"N": str(self.as_of_ms)}}
        assignments = ["asOf = :as_of"]
        for i, (name, value) in enumerate(sorted(self.sets.items())):
            names[f"#a{i}"] = name  # "count" is a reserved word: every name goes through #
            values[f":v{i}"] = value
            assignments.append(f"#a{i} = :v{i}")
        return {
            "TableName": self.table,
            "Key": self.key,
            "UpdateExpression": "SET " + ", ".join(assignments),
            "ConditionExpression": NEWER_ONLY,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }


class _Outcome(NamedTuple):
    retries: int
    repeat: bool  # the condition failed: this value or a newer one is already there


def level_write(table: str, level: str, players: int, as_of_ms: int) -> _Write:
    sets = {"playerCount": {"N": str(players)}, "updatedAt": {"S": iso_utc(as_of_ms)}}
    return _Write(table, {"levelId": {"S": level}}, sets, as_of_ms)


def transition_write(table: str, transition: str, total: int, as_of_ms: int) -> _Write:
    level_from, _, level_to = transition.partition("/")
    sets = {"count": {"N": str(total)}}
    if level_from:
        sets["levelFrom"] = {"S": level_from}
    if level_to:
        sets["levelTo"] = {"S": level_to}
    return _Write(table, {"transitionLevels": {"S": transition}}, sets, as_of_ms)


def _json_counts(pairs) -> str:
    return json.dumps({key: int(count) for key, count in pairs}, sort_keys=True, separators=(",", ":"))


def checkpoint_write(table: str, pipeline_name: str, checkpoint: Checkpoint) -> _Write:
    sets = {
        "levels": {"S": _json_counts(checkpoint.levels)},
        "transitionTotals": {"S": _json_counts(checkpoint.transition_totals)},
        "updatedAt": {"S": iso_utc(checkpoint.as_of_ms)},
    }
    return _Write(table, {"pipeline": {"S": pipeline_name}}, sets, checkpoint.as_of_ms)


def write_item(client, write: _Write, retry_for_secs: float = RETRY_FOR_SECS) -> _Outcome:
    """One conditional UpdateItem, retried with backoff while AWS is throttling or away
    (pipeline.aws), then AwsCallFailed. A failed condition is a success (a repeat).
    Thread-safe; it touches no Beam metric (metrics are thread-local: the caller counts
    the outcome)."""
    request = write.request()

    def update():
        try:
            client.update_item(**request)
            return False
        except ClientError as error:
            if error_code(error) == REPEAT:
                return True  # this value or a newer one is there already
            raise

    repeat, retries = call_with_retries(update, f"UpdateItem on {write.describe()}", retry_for_secs)
    return _Outcome(retries, repeat)


def dynamodb_client_factory(region: str, endpoint_url: str | None) -> ClientFactory:
    return ClientFactory("dynamodb", region, endpoint_url, max_pool_connections=WRITE_WORKERS * 2)


def default_client(region: str, endpoint_url: str | None):
    return dynamodb_client_factory(region, endpoint_url)()


class _WriteCounterUpdatesFn(beam.DoFn):
    """Writes one CounterUpdate: its level and transition items, in parallel. Yields the
    CounterUpdate once every item is written.

    Why effectively once: every item holds an absolute value and the asOf of the update
    instant it belongs to, and is written with an UpdateItem conditioned on
    "attribute_not_exists(asOf) OR asOf < :as_of". Writing a value twice (retried bundle,
    retried request whose response was lost, replay after a restart) fails the condition
    the second time and changes nothing; an older update processed after a newer one
    (out of order) fails it too, so no value moves back in time. A failed condition
    means "this value or a newer one is there": success, counted as
    dynamodb_rejected_repeats. Throttling and a missing AWS are waited out (bounded,
    pipeline.aws); any other failure raises: the runner retries the bundle, which is
    safe for the same reason.

    The checkpoint is not written here but by CommitCheckpoints, once the watermark
    shows every update up to its instant written (pipeline.sinks.commit).
    """

    def __init__(
        self, client_factory: Callable, level_table: str, transitions_table: str, retry_for_secs: float
    ):
        self._client_factory = client_factory
        self._level_table = level_table
        self._transitions_table = transitions_table
        self._retry_for_secs = retry_for_secs
        self._client = None
        self._pool = None
        self._writes = metrics.counter("dynamodb_writes")
        self._retries = metrics.counter("dynamodb_retries")
        self._repeats = metrics.counter("dynamodb_rejected_repeats")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = state["_pool"] = None
        return state

    def setup(self):
        self._client = self._client_factory()
        self._pool = ThreadPoolExecutor(max_workers=WRITE_WORKERS, thread_name_prefix="dynamodb-write")

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def process(self, update: CounterUpdate):
        writes = [level_write(self._level_table, k, n, update.as_of_ms) for k, n in update.levels]
        writes += [
            transition_write(self._transitions_table, k, n, update.as_of_ms)
            for k, n in update.transition_totals
        ]
        futures = [self._pool.submit(write_item, self._client, w, self._retry_for_secs) for w in writes]
        errors = []
        for future in futures:  # wait for all, so none is still in flight when we raise
            try:
                count_outcome(future.result(), self._writes, self._retries, self._repeats)
            except Exception as error:  # noqa: BLE001 - re-raised below, after all are done
                errors.append(error)
        if errors:
            for error in errors[1:]:
                _LOG.error("%s", error)
            raise errors[0]
        yield update


def count_outcome(outcome: _Outcome, writes, retries, repeats):
    retries.inc(outcome.retries)
    (repeats if outcome.repeat else writes).inc()


class WriteCounterUpdates(beam.PTransform):
    """CounterUpdates -> the level and transitions tables. Returns the CounterUpdates,
    each once it is written."""

    def __init__(
        self,
        region,
        endpoint_url=None,
        level_table=LEVEL_TABLE,
        transitions_table=TRANSITIONS_TABLE,
        client_factory=None,
        retry_for_secs=RETRY_FOR_SECS,
    ):
        super().__init__()
        self._fn = _WriteCounterUpdatesFn(
            client_factory or dynamodb_client_factory(region, endpoint_url),
            level_table,
            transitions_table,
            retry_for_secs,
        )

    def expand(self, counter_updates):
        return counter_updates | "WriteDynamoDBItems" >> beam.ParDo(self._fn)


def create_tables(client, level_table, transitions_table, progress_table, wait_secs: float = 60.0):
    """Creates the missing tables (on demand billing) and waits until all are ACTIVE.
    Existing tables are left alone."""
    keys = ((level_table, LEVEL_KEY), (transitions_table, TRANSITION_KEY), (progress_table, PROGRESS_KEY))
    for table, key in keys:
        try:
            client.describe_table(TableName=table)
            continue
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
        try:
            client.create_table(
                TableName=table,
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            _LOG.info("created DynamoDB table %s", table)
        except ClientError as error:
            if error_code(error) != "ResourceInUseException":  # created meanwhile
                raise
    waiter = client.get_waiter("table_exists")
    for table, _ in keys:
        waiter.wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": max(1, int(wait_secs))})


def _counts_of(attribute) -> tuple[tuple[str, int], ...]:
    if attribute is None:
        return ()
    if "S" in attribute:
        counts = json.loads(attribute["S"])
    else:  # a DynamoDB map, should someone store one
        counts = {k: v["N"] for k, v in attribute["M"].items()}
    return tuple(sorted((k, int(n)) for k, n in counts.items()))


def read_checkpoint(client, progress_table, pipeline_name=PIPELINE_NAME) -> Checkpoint | None:
    """The stored checkpoint, or None when there is none."""
    item = client.get_item(
        TableName=progress_table, Key={"pipeline": {"S": pipeline_name}}, ConsistentRead=True
    ).get("Item")
    if not item or "asOf" not in item:
        return None
    return Checkpoint(
        int(item["asOf"]["N"]), _counts_of(item.get("levels")), _counts_of(item.get("transitionTotals"))
    )
