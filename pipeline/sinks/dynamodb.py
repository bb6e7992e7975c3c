"""WriteCounterUpdates: the ledger's CounterUpdates to DynamoDB, effectively once (the
tables: pipeline.rules.tables); and the checkpoint's items in the progress table.

Every value is written by a conditional UpdateItem of an absolute value ("asOf <
:as_of"), so no write can apply twice or move a value back in time. BatchWriteItem
takes no condition and is not used.

The checkpoint is one head item, as it always was while the ledger fits in one item;
beyond that (hundreds of levels, tens of thousands of transition pairs: DynamoDB's item
limit is 400 KB) the head names parts that hold the ledger compressed
(`write_checkpoint`, `read_checkpoint`).
"""

import hashlib
import json
import logging
import zlib
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
    removes: tuple = ()  # attribute names to remove

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
        expression = "SET " + ", ".join(assignments)
        if self.removes:
            for i, name in enumerate(self.removes):
                names[f"#r{i}"] = name
            expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(self.removes)))
        return {
            "TableName": self.table,
            "Key": self.key,
            "UpdateExpression": expression,
            "ConditionExpression": NEWER_ONLY,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }


class _Outcome(NamedTuple):
    retries: int
    repeat: bool  # the condition failed: this value or a newer one is already there
    old: dict | None = None  # the item before the write, when asked for (return_old)


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


def _json_counts(counts) -> str:
    return json.dumps({key: int(n) for key, n in dict(counts).items()}, sort_keys=True, separators=(",", ":"))


def write_item(
    client, write: _Write, retry_for_secs: float = RETRY_FOR_SECS, return_old: bool = False
) -> _Outcome:
    """One conditional UpdateItem, retried with backoff while AWS is throttling or away
    (pipeline.aws), then AwsCallFailed. A failed condition is a success (a repeat).
    Thread-safe; it touches no Beam metric (metrics are thread-local: the caller counts
    the outcome). `return_old`: the outcome carries the item as it was before the write."""
    request = write.request()
    if return_old:
        request["ReturnValues"] = "ALL_OLD"

    def update():
        try:
            return client.update_item(**request).get("Attributes", {})
        except ClientError as error:
            if error_code(error) == REPEAT:
                return None  # this value or a newer one is there already
            raise

    old, retries = call_with_retries(update, f"UpdateItem on {write.describe()}", retry_for_secs)
    return _Outcome(retries, old is None, old if return_old else None)


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
    shows every update up to its timestamp written (pipeline.sinks.commit): each
    CounterUpdate is yielded after its items are written, with its own timestamp (its
    instant, or the ledger's wake when that is later).

    Why coalesced updates keep that order: catching up, one wake of the ledger (its
    timer at W) closes many instants and each key comes once, with its latest value, in
    the CounterUpdate of the instant t of its last change in the wake
    (`coalesce_updates`), as of t and stamped W, like the wake's checkpoint C (its
    latest window end). Take a key whose last change was at t. If t <= C, its write is
    stamped W like C, so C is committed only after it, and the value written is the
    key's value at C too (the key did not change between t and the end of the wake).
    If t > C, C may be committed before a later wake's write lands; a restart from C
    then closes the instants after C again from the same sums, so the key changes at t
    again and is written again once t is closed (a value the
    first run wrote meanwhile refuses older ones by its asOf). Either way nothing the
    checkpoint covers is lost, and the asOf condition keeps every write effectively
    once and never older than what a reader has seen. The values in between (as of
    instants before t) are never written: the contract lets a writer that closes
    several instants at once write only the last of each key.
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


# --- The checkpoint in the progress table ----------------------------------------------
#
# head   pipeline = PIPELINE_NAME: asOf (N), updatedAt (S), and either
#          levels, transitionTotals (S, JSON): the whole ledger, while it fits (as always), or
#          parts (N), partsDigest (S): it is in `parts` part items, and transitionTotals
#          holds SPLIT_NOTE (not JSON: a version that knows only one item fails loudly
#          instead of resuming from no totals)
# part i pipeline = "{PIPELINE_NAME}/checkpoint/{asOf}/{partsDigest}/{i}": part (B), asOf (N):
#          slice i of zlib(JSON {"levels": {...}, "transitionTotals": {...}})

# The ledger's JSON up to this stays in the head item. Under half the item limit: moto's
# DynamoDB applies an UpdateItem's SETs one by one and checks the size after each, so the
# old ledger and the new one must fit in one item together.
CHECKPOINT_INLINE_BYTES = 180_000
CHECKPOINT_PART_BYTES = 350_000  # compressed bytes per part; DynamoDB's item limit is 400 KB
SPLIT_NOTE = "in parts (partsDigest): read with a version that reads split checkpoints"
READ_ATTEMPTS = 5  # a checkpoint replaced while being read: read the head again


class CheckpointUnreadable(RuntimeError):
    """The stored checkpoint's parts do not add up, even after reading it again."""


class CheckpointItems(NamedTuple):
    head: _Write  # conditional on asOf, written last
    parts: list[dict]  # PutItem items, written first (none while the ledger fits in the head)


def _part_key(pipeline_name: str, as_of_ms: int, digest: str, index: int) -> str:
    return f"{pipeline_name}/checkpoint/{as_of_ms}/{digest}/{index}"


def _part_keys(pipeline_name: str, head: dict) -> list[str]:
    """The keys of the parts a head item (typed attributes) names; [] for an inline one."""
    if "partsDigest" not in head:
        return []
    as_of, digest = int(head["asOf"]["N"]), head["partsDigest"]["S"]
    return [_part_key(pipeline_name, as_of, digest, i) for i in range(int(head["parts"]["N"]))]


def checkpoint_items(
    table: str,
    pipeline_name: str,
    checkpoint: Checkpoint,
    inline_bytes: int = CHECKPOINT_INLINE_BYTES,
    part_bytes: int = CHECKPOINT_PART_BYTES,
) -> CheckpointItems:
    """The items that store `checkpoint`. Parts are named by their content (asOf and a
    digest of the payload), so writing one again writes the same bytes, and a part the
    head names never changes."""
    levels, totals = _json_counts(checkpoint.levels), _json_counts(checkpoint.transition_totals)
    updated = {"S": iso_utc(checkpoint.as_of_ms)}
    if len(levels) + len(totals) <= inline_bytes:
        sets = {"levels": {"S": levels}, "transitionTotals": {"S": totals}, "updatedAt": updated}
        head = _Write(
            table, {"pipeline": {"S": pipeline_name}}, sets, checkpoint.as_of_ms, ("parts", "partsDigest")
        )
        return CheckpointItems(head, [])
    payload = zlib.compress(f'{{"levels":{levels},"transitionTotals":{totals}}}'.encode(), 6)
    digest = hashlib.sha256(payload).hexdigest()[:32]
    slices = [payload[i : i + part_bytes] for i in range(0, len(payload), part_bytes)]
    parts = [
        {
            "pipeline": {"S": _part_key(pipeline_name, checkpoint.as_of_ms, digest, i)},
            "asOf": {"N": str(checkpoint.as_of_ms)},
            "part": {"B": piece},
        }
        for i, piece in enumerate(slices)
    ]
    sets = {
        "parts": {"N": str(len(parts))},
        "partsDigest": {"S": digest},
        "transitionTotals": {"S": SPLIT_NOTE},
        "updatedAt": updated,
    }
    head = _Write(table, {"pipeline": {"S": pipeline_name}}, sets, checkpoint.as_of_ms, ("levels",))
    return CheckpointItems(head, parts)


def write_checkpoint(
    client,
    table: str,
    pipeline_name: str,
    checkpoint: Checkpoint,
    retry_for_secs: float = RETRY_FOR_SECS,
    inline_bytes: int = CHECKPOINT_INLINE_BYTES,
    part_bytes: int = CHECKPOINT_PART_BYTES,
) -> list[_Outcome]:
    """Stores `checkpoint`: its parts first, then the head, conditional on asOf like every
    value, so a reader never finds a head naming a part not written yet, and an older
    checkpoint never replaces a newer one. Returns the outcome of each write.

    Parts no head names any more are deleted afterwards: the previous head's, once this
    one replaced it (the write returns the item it replaced), or this one's, when
    its head was refused (a newer or the same checkpoint is there, naming other parts).
    A reader that read the previous head just before finds a part gone and reads the
    head again. A crash between the parts and the head, or a lost answer to the head's
    write, leaves parts no head names: never read, a few hundred KB each time."""
    items = checkpoint_items(table, pipeline_name, checkpoint, inline_bytes, part_bytes)
    outcomes = []
    for part in items.parts:
        key = part["pipeline"]["S"]
        _, retries = call_with_retries(
            lambda part=part: client.put_item(TableName=table, Item=part),
            f"PutItem of checkpoint part {key} in table {table!r}",
            retry_for_secs,
        )
        outcomes.append(_Outcome(retries, False))
    outcome = write_item(client, items.head, retry_for_secs, return_old=True)
    outcomes.append(outcome)
    ours = [part["pipeline"]["S"] for part in items.parts]
    if not outcome.repeat:  # the previous head's parts
        unnamed = [key for key in _part_keys(pipeline_name, outcome.old or {}) if key not in ours]
    elif ours:  # ours, unless the head there is this very checkpoint
        named = _part_keys(pipeline_name, _get_item(client, table, pipeline_name, retry_for_secs) or {})
        unnamed = [key for key in ours if key not in named]
    else:
        unnamed = []
    for key in unnamed:
        try:
            call_with_retries(
                lambda key=key: client.delete_item(TableName=table, Key={"pipeline": {"S": key}}),
                f"DeleteItem of checkpoint part {key} in table {table!r}",
                retry_for_secs,
            )
        except Exception as error:  # noqa: BLE001 - a part left behind is never read: not worth failing for
            _LOG.warning("checkpoint part %s left in %s: %s", key, table, error)
    return outcomes


def _get_item(client, table: str, key: str, retry_for_secs: float = RETRY_FOR_SECS) -> dict | None:
    item, _ = call_with_retries(
        lambda: client.get_item(TableName=table, Key={"pipeline": {"S": key}}, ConsistentRead=True).get(
            "Item"
        ),
        f"GetItem {key} in table {table!r}",
        retry_for_secs,
    )
    return item


def _counts_of(attribute) -> dict[str, int]:
    if attribute is None:
        return {}
    if "S" in attribute:
        counts = json.loads(attribute["S"])
    else:  # a DynamoDB map, should someone store one
        counts = {k: v["N"] for k, v in attribute["M"].items()}
    return {k: int(n) for k, n in counts.items()}


def _read_parts(client, table: str, pipeline_name: str, head: dict) -> Checkpoint | None:
    """The checkpoint a split head names, or None if a part is gone or the parts do not
    add up (a newer checkpoint replaced this one meanwhile)."""
    pieces = []
    for key in _part_keys(pipeline_name, head):
        part = _get_item(client, table, key)
        if part is None:
            return None
        pieces.append(bytes(part["part"]["B"]))
    payload = b"".join(pieces)
    if hashlib.sha256(payload).hexdigest()[:32] != head["partsDigest"]["S"]:
        return None
    ledger = json.loads(zlib.decompress(payload))
    return Checkpoint(
        int(head["asOf"]["N"]),
        {k: int(n) for k, n in ledger["levels"].items()},
        {k: int(n) for k, n in ledger["transitionTotals"].items()},
    )


def stored_once(
    client, progress_table: str, key: str, attribute: str, text: str, retry_for_secs=RETRY_FOR_SECS
) -> str:
    """`text` stored under `key` of the progress table, unless something is stored there
    already (by an earlier run, or by this put's lost answer): returns what is stored."""
    item = {PROGRESS_KEY: {"S": key}, attribute: {"S": text}}

    def put_if_absent():
        try:
            client.put_item(
                TableName=progress_table,
                Item=item,
                ConditionExpression=f"attribute_not_exists({PROGRESS_KEY})",
            )
            return True
        except ClientError as error:
            if error_code(error) == REPEAT:
                return False
            raise

    stored, _ = call_with_retries(put_if_absent, f"PutItem {key} in table {progress_table!r}", retry_for_secs)
    if stored:
        return text
    found = _get_item(client, progress_table, key, retry_for_secs) or {}
    return found.get(attribute, {}).get("S", text)


def claim_settings(
    client, progress_table: str, settings: dict, pipeline_name=PIPELINE_NAME, retry_for_secs=RETRY_FOR_SECS
) -> dict | None:
    """The settings that shape the numbers are stored once, by the first run on these
    tables (item "{pipeline_name}/settings" of the progress table); a later run with
    other ones would mix two contracts in one set of tables, checkpoint and history.
    Returns the stored settings when they differ from `settings`, else None (stored
    now, or the same). Only settings the store has are compared: one added to
    `settings` later is not a difference for tables written before it."""
    text = json.dumps(settings, sort_keys=True)
    before = json.loads(
        stored_once(client, progress_table, f"{pipeline_name}/settings", "settings", text, retry_for_secs)
    )
    differ = {name: value for name, value in before.items() if settings.get(name) != value}
    return before if differ else None


def claim_start(
    client, progress_table: str, start: str, pipeline_name=PIPELINE_NAME, retry_for_secs=RETRY_FOR_SECS
) -> str:
    """Where the first run on these tables started reading the stream (an
    --initial_position value, LATEST pinned to its time), stored once (item
    "{pipeline_name}/start"); returns it. A restart never reads from before it: records
    older than that were never counted, and must not be now."""
    return stored_once(
        client, progress_table, f"{pipeline_name}/start", "initialPosition", start, retry_for_secs
    )


def read_checkpoint(client, progress_table, pipeline_name=PIPELINE_NAME) -> Checkpoint | None:
    """The stored checkpoint, or None when there is none."""
    for _ in range(READ_ATTEMPTS):
        head = _get_item(client, progress_table, pipeline_name)
        if not head or "asOf" not in head:
            return None
        if "partsDigest" not in head:
            return Checkpoint(
                int(head["asOf"]["N"]),
                _counts_of(head.get("levels")),
                _counts_of(head.get("transitionTotals")),
            )
        checkpoint = _read_parts(client, progress_table, pipeline_name, head)
        if checkpoint is not None:
            return checkpoint
    raise CheckpointUnreadable(
        f"the checkpoint in table {progress_table!r} names parts that are missing or do not match its "
        f"digest, read {READ_ATTEMPTS} times"
    )
