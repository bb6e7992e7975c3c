"""Faults between the pipeline and AWS: what passes is waited out, what does not (or lasts
longer than pipeline.aws.RETRY_FOR_SECS) fails loudly, and either way nothing is lost or
counted twice.

Fast: the retry rules (pipeline.aws) with a fake clock, what counts as transient (Beam's
S3 client included), objects under S3 throttling and short reads, the two chaos tools.
Slow (each a pipeline on Prism reading a 2-shard stream, writing DynamoDB and S3, ending
equal to the reference model): a real chaos proxy (Toxiproxy) between the pipeline and
the embedded AWS, AWS unreachable (refused, then reset), slow, cutting replies, and
away for longer than the bound (then a restart with the same flags); AWS refusing
(DynamoDB throttling, S3 503 SlowDown, Kinesis throttling and expired iterators in
bursts) injected into the pipeline's own process. The long versions (60 s outages, a
live feed) are bench/chaos.py.
"""

import io
import os
import subprocess
import sys
import time

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from pipeline import aws
from pipeline.apps.simulator import SimulationSettings, simulate
from pipeline.aws import (
    AwsCallFailed,
    ClientFactory,
    IncompleteReply,
    RetrySchedule,
    call_with_retries,
    is_transient,
    require,
)
from pipeline.sinks import objects
from pipeline.testing.aws_server import REGION
from pipeline.testing.chaos import (
    AwsFaults,
    FaultRun,
    Toxiproxy,
    dynamodb_throttling,
    faults_env,
    kinesis_expired_iterators,
    kinesis_throttling,
    missing_toxiproxy_reason,
    s3_slow_down,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_toxiproxy = pytest.mark.skipif(
    missing_toxiproxy_reason() is not None, reason=str(missing_toxiproxy_reason())
)


def client_error(code, status):
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


class FakeClock:
    """Beam's retry clock (sleep) and a monotonic `now`, both on fake time."""

    def __init__(self):
        self.t = 1000.0

    def sleep(self, secs):
        self.t += secs

    def now(self):
        return self.t


# --- The rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error,transient",
    [
        (EndpointConnectionError(endpoint_url="http://x"), True),  # connection refused
        (ConnectionClosedError(endpoint_url="http://x"), True),  # reset, or closed mid-reply
        (ReadTimeoutError(endpoint_url="http://x"), True),
        (IncompleteReply("cut short"), True),
        (client_error("ThrottlingException", 400), True),
        (client_error("ProvisionedThroughputExceededException", 400), True),
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("SomethingNew", 502), True),
        (client_error("AccessDeniedException", 400), False),
        (client_error("ValidationException", 400), False),
        (client_error("ResourceNotFoundException", 400), False),
        (AwsCallFailed("given up"), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_passes_and_what_does_not(error, transient):
    assert is_transient(error) is transient


def test_a_reply_without_what_aws_always_sends_was_cut_short():
    assert require({"Records": []}, "Records", what="GetRecords") == {"Records": []}
    with pytest.raises(IncompleteReply, match="GetRecords: the reply has no Records"):
        require({"ResponseMetadata": {}}, "Records", what="GetRecords")


def test_throttling_for_30_s_is_waited_out():
    clock = FakeClock()
    throttled_until = clock.t + 30

    def update():
        if clock.t < throttled_until:
            raise client_error("ThrottlingException", 400)
        return "written"

    result, retries = call_with_retries(update, "UpdateItem", retry_for_secs=180, clock=clock, now=clock.now)
    assert result == "written" and retries >= 5
    assert clock.t - (throttled_until - 30) < 30 + aws.MAX_DELAY_SECS * 1.5 + 1  # backoff stays bounded


def test_an_outage_longer_than_the_bound_fails_loudly_with_what_was_tried():
    clock = FakeClock()

    def refused():
        clock.t += 5  # each try itself takes time: the bound is wall time, these included
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    with pytest.raises(AwsCallFailed, match=r"writing s3://b/k failed \(still failing after \d+ s") as failed:
        call_with_retries(refused, "writing s3://b/k", retry_for_secs=60, clock=clock, now=clock.now)
    assert 60 <= clock.t - 1000 < 60 + 5 + aws.MAX_DELAY_SECS * 1.5 + 1
    assert isinstance(failed.value.__cause__, EndpointConnectionError)


def test_what_cannot_pass_fails_at_once():
    calls = []

    def denied():
        calls.append(1)
        raise client_error("AccessDeniedException", 400)

    with pytest.raises(AwsCallFailed, match="not retryable"):
        call_with_retries(denied, "UpdateItem")
    assert len(calls) == 1


def test_a_retry_schedule_backs_off_per_key_and_fails_after_the_bound():
    clock = FakeClock()
    schedule = RetrySchedule(base_secs=0.2, max_secs=5.0, retry_for_secs=30, clock=clock.now)
    error = EndpointConnectionError(endpoint_url="http://x")
    delays = []
    while clock.t - 1000 <= 30:
        delays.append(schedule.failed("shard-0", error, "GetRecords on shard-0"))
        clock.t += delays[-1] + 0.2
    assert schedule.is_failing("shard-0") and not schedule.is_failing("shard-1")
    assert all(0 <= d <= 5.0 for d in delays) and len(delays) >= 8
    with pytest.raises(AwsCallFailed, match="GetRecords on shard-0 failed \\(still failing after 3"):
        schedule.failed("shard-0", error, "GetRecords on shard-0")
    schedule.succeeded("shard-0")
    assert not schedule.is_failing("shard-0")
    assert schedule.failed("shard-0", error, "again") <= 0.4  # a success starts over


def test_clients_made_in_one_process_share_the_parsed_service_model():
    """Every DoFn instance makes its client in setup(). Each boto3 session parsed the
    service's model anew, about 9 MiB kept per client: the soak's pipeline grew by that
    whenever Beam made new DoFn instances (traced with tracemalloc, 2026-12-05)."""
    import tracemalloc

    factory = aws.ClientFactory("dynamodb", "us-east-1", "http://127.0.0.1:1")
    first = factory()
    tracemalloc.start()
    try:
        second, third = factory(), factory()
        per_client = tracemalloc.get_traced_memory()[0] / 2
    finally:
        tracemalloc.stop()
    model = first.meta.service_model._service_description
    assert second.meta.service_model._service_description is model
    assert third.meta.service_model._service_description is model
    assert per_client < 2 * 2**20  # 9 MiB each when every session parsed the model itself


@pytest.mark.parametrize("value,expected", [("7.5", "7.5"), ("", "180.0"), ("soon", "not a number")])
def test_the_bound_can_be_set_for_every_process(value, expected):
    done = subprocess.run(
        [sys.executable, "-c", "import pipeline.aws as a; print(a.RETRY_FOR_SECS)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, aws.RETRY_FOR_SECS_ENV: value},
    )
    assert expected in done.stdout + done.stderr


# --- Objects -------------------------------------------------------------------------------------


class FlakyS3:
    """An S3 client (and its factory) that answers 503 SlowDown to the first `fail` puts
    and cuts the first `short_reads` replies short, keeping objects in `store`: moto
    cannot be asked to do either at a given call."""

    def __init__(self, fail: int, short_reads: int = 0):
        self.fail = fail
        self.short_reads = short_reads
        self.store = {}

    def shared(self):
        return self

    def put_object(self, Bucket, Key, Body, **_):  # noqa: N803 - boto3's names
        if self.fail:
            self.fail -= 1
            raise client_error("SlowDown", 503)
        self.store[Bucket, Key] = Body

    def get_object(self, Bucket, Key):  # noqa: N803
        if (Bucket, Key) not in self.store:
            raise client_error("NoSuchKey", 404)
        body = self.store[Bucket, Key]
        if self.short_reads:
            self.short_reads -= 1
            body = body[: len(body) // 2]
        return {"Body": io.BytesIO(body), "ContentLength": len(self.store[Bucket, Key])}


def test_objects_wait_out_slowdown_and_read_whole_objects(monkeypatch):
    flaky = FlakyS3(fail=3, short_reads=2)
    monkeypatch.setattr(aws, "INITIAL_DELAY_SECS", 0.01)
    assert objects.write_object("s3://b/history/x.json", b'{"a": 1}', flaky) == 3
    assert objects.read_object("s3://b/history/x.json", flaky) == b'{"a": 1}'  # two short reads retried
    assert objects.read_object("s3://b/none.json", flaky) is None


def test_objects_on_s3_are_one_call_each_through_one_client(moto_endpoint):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    s3.create_bucket(Bucket="one-client")
    factory = ClientFactory("s3", REGION, moto_endpoint)
    calls = []

    def record(model, **_):
        calls.append(model.name)

    events = factory.shared().meta.events  # the process's client: leave it as it was found
    events.register("before-call.s3", record)
    try:
        objects.write_object("s3://one-client/a/b.json", b"{}", factory)
        assert objects.read_object("s3://one-client/a/b.json", factory) == b"{}"
        assert objects.read_object("s3://one-client/a/none.json", factory) is None
    finally:
        events.unregister("before-call.s3", record)
    assert calls == ["PutObject", "GetObject", "GetObject"]
    assert factory.shared() is ClientFactory("s3", REGION, moto_endpoint).shared()


# --- The chaos tools ---------------------------------------------------------------------------------


@needs_toxiproxy
def test_toxiproxy_refuses_resets_slows_and_cuts_replies(moto_endpoint):
    """What each fault does to a call, as the pipeline's clients see it."""
    with Toxiproxy() as toxiproxy:
        proxy = toxiproxy.proxy("aws-check", moto_endpoint.removeprefix("http://"))
        dynamodb = ClientFactory("dynamodb", REGION, proxy.endpoint, retries={"max_attempts": 1})()
        direct = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name=REGION)
        direct.create_table(
            TableName="chaos-check",
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )

        def update(key):
            return dynamodb.update_item(
                TableName="chaos-check",
                Key={"k": {"S": key}},
                UpdateExpression="SET v = :v",
                ExpressionAttributeValues={":v": {"N": "1"}},
            )

        with proxy.down(), pytest.raises(EndpointConnectionError):
            update("refused")
        with proxy.resetting(), pytest.raises(ConnectionClosedError):
            update("reset")
        with proxy.cutting_responses(1), pytest.raises(ConnectionClosedError):
            update("cut")  # carried out, the reply lost
        with proxy.slow(300):
            started = time.monotonic()
            update("slow")
            assert time.monotonic() - started >= 0.3
        stored = {item["k"]["S"] for item in direct.scan(TableName="chaos-check")["Items"]}
        assert stored == {"cut", "slow"}


@needs_toxiproxy
@pytest.mark.parametrize("cut_after_bytes", [100, 300])  # inside the headers; inside the body
def test_a_reply_cut_short_is_an_error_never_an_empty_answer(moto_endpoint, cut_after_bytes):
    """Cut inside its headers, a reply parses as a whole empty one (http.client ends the
    headers where the connection closed): a checkpoint read would find no checkpoint and
    a snapshot read no object. Every client the pipeline makes refuses such a reply."""
    name = f"cut-replies-{cut_after_bytes}"
    direct = {
        service: boto3.client(service, endpoint_url=moto_endpoint, region_name=REGION)
        for service in ("s3", "dynamodb")
    }
    direct["s3"].create_bucket(Bucket=name)
    direct["s3"].put_object(Bucket=name, Key="latest.json", Body=b'{"update_time": "x"}' * 20)
    direct["dynamodb"].create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pipeline", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pipeline", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    direct["dynamodb"].put_item(TableName=name, Item={"pipeline": {"S": "p"}, "asOf": {"N": "1"}})
    with Toxiproxy() as toxiproxy:
        proxy = toxiproxy.proxy(name, moto_endpoint.removeprefix("http://"))
        once = {"retries": {"max_attempts": 1}}
        s3 = ClientFactory("s3", REGION, proxy.endpoint, **once)()
        dynamodb = ClientFactory("dynamodb", REGION, proxy.endpoint, **once)()
        with proxy.cutting_responses(cut_after_bytes):
            with pytest.raises((IncompleteReply, ResponseStreamingError)):
                s3.get_object(Bucket=name, Key="latest.json")["Body"].read()
            with pytest.raises(IncompleteReply):
                dynamodb.get_item(TableName=name, Key={"pipeline": {"S": "p"}}, ConsistentRead=True)
            with pytest.raises(IncompleteReply):
                dynamodb.describe_table(TableName=name)
        assert "Item" in dynamodb.get_item(TableName=name, Key={"pipeline": {"S": "p"}})


def test_aws_faults_reach_this_process_only_for_the_calls_they_name(moto_endpoint):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    s3.create_bucket(Bucket="chaos-faults")
    fault = s3_slow_down(secs=None, key_contains="history/")
    with AwsFaults(fault):
        s3.put_object(Bucket="chaos-faults", Key="latest.json", Body=b"{}")
        with pytest.raises(ClientError, match="SlowDown"):
            s3.put_object(Bucket="chaos-faults", Key="history/1.json", Body=b"{}")
    s3.put_object(Bucket="chaos-faults", Key="history/1.json", Body=b"{}")
    assert fault.raised == 1


# --- End to end: a pipeline on Prism meeting the faults ------------------------------------------------


def backlog_scenario(moto_endpoint, pipeline_endpoint, name, tmp_path, env=None):
    stream = simulate(
        SimulationSettings(seed=21, players=50, duration_secs=900, max_out_of_orderness_secs=10)
    )
    run = FaultRun(moto_endpoint, pipeline_endpoint, name, str(tmp_path), env=env)
    run.create()
    run.put(stream.lines)
    return stream, run


def assert_exact(run, stream, finished):
    assert finished.returncode == 0, finished.log[-3000:]
    assert "AwsCallFailed" not in finished.log, "a call gave up"
    assert run.outputs_problems(stream.observations, stream.malformed) == []


@pytest.fixture
def toxiproxy():
    reason = missing_toxiproxy_reason()
    if reason:
        pytest.skip(reason)
    with Toxiproxy() as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["unreachable", "slow", "cut replies"])
def test_through_a_chaos_proxy_the_outputs_are_exact(moto_endpoint, toxiproxy, tmp_path, fault):
    """20 s of the fault once the first window was published: connections refused for 10 s
    then reset for 10 s; or 2 s added to every reply; or every connection cut in the middle
    of its first reply for 10 s (each call carried out, its answer lost), then half of them
    for 10 s.

    The cuts start at every connection for a reason: Toxiproxy draws the toxicity once per
    connection, so at half a keep-alive connection it spared could carry a client's calls
    through the whole fault, and a run could pass without a retry to see."""
    name = "chaos-" + fault.replace(" ", "-")
    proxy = toxiproxy.proxy(name, moto_endpoint.removeprefix("http://"))
    stream, run = backlog_scenario(moto_endpoint, proxy.endpoint, name, tmp_path)
    run.start("--stop_when_idle_secs=3")
    try:
        run.wait_for("the first window", lambda: run.history_objects() > 0)
        if fault == "unreachable":
            with proxy.down():
                time.sleep(10)
            with proxy.resetting():
                time.sleep(10)
        elif fault == "slow":
            with proxy.slow(2000):
                time.sleep(20)
        else:
            with proxy.cutting_responses(100):
                time.sleep(10)
            with proxy.cutting_responses(100, toxicity=0.5):
                time.sleep(10)
        finished = run.finish()
    finally:
        run.stop()
    assert_exact(run, stream, finished)
    if fault != "slow":
        retries = sum(
            finished.metrics.get(k, 0) for k in ("kinesis_retries", "object_retries", "dynamodb_retries")
        )
        assert retries > 0, finished.metrics


@pytest.mark.slow
def test_an_outage_longer_than_the_bound_fails_loudly_and_a_restart_ends_exact(
    moto_endpoint, toxiproxy, tmp_path
):
    name = "chaos-beyond-bound"
    proxy = toxiproxy.proxy(name, moto_endpoint.removeprefix("http://"))
    env = {aws.RETRY_FOR_SECS_ENV: "15"}
    stream, run = backlog_scenario(moto_endpoint, proxy.endpoint, name, tmp_path, env=env)
    run.start("--stop_when_idle_secs=3")
    try:
        run.wait_for("the first window", lambda: run.history_objects() > 0)
        with proxy.down():
            failed = run.finish(timeout_secs=180)  # 15 s of retries, then loudly
        assert failed.returncode != 0
        assert "AwsCallFailed" in failed.log and "still failing after" in failed.log
        run.start("--stop_when_idle_secs=3")
        finished = run.finish()
    finally:
        run.stop()
    assert_exact(run, stream, finished)


@pytest.mark.slow
@pytest.mark.parametrize(
    "faults,counter",
    [
        ([dynamodb_throttling(secs=30)], "dynamodb_retries"),
        ([s3_slow_down(secs=30, key_contains="history/")], "object_retries"),
        (
            [kinesis_throttling(calls=range(3, 15)), kinesis_expired_iterators(calls=range(18, 24))],
            "kinesis_throttled_calls",
        ),
    ],
    ids=["dynamodb-throttled-30s", "s3-slowdown-30s", "kinesis-bursts"],
)
def test_aws_refusing_loses_and_doubles_nothing(moto_endpoint, tmp_path, faults, counter):
    name = "refusing-" + faults[0].service
    stream, run = backlog_scenario(moto_endpoint, moto_endpoint, name, tmp_path, env=faults_env(*faults))
    run.start("--stop_when_idle_secs=3")
    try:
        finished = run.finish()
    finally:
        run.stop()
    assert_exact(run, stream, finished)
    assert finished.metrics["injected_faults"] > 0
    assert finished.metrics.get(counter, 0) > 0, finished.metrics
    if counter == "dynamodb_retries":
        assert run.status()["dynamodb_retries"] > 0  # visible where people look
