"""Credentials never leave the environment they were given in: not in logs (a run that
ends well, one that fails loudly), dead letters, snapshots, the status object, DynamoDB
items, the live view or the dashboard's pages and JSON.

Every process gets distinctive dummy keys in its environment (moto accepts any key);
every output is then searched for them, verbatim and URL-encoded.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import boto3
import pytest

from pipeline.apps.simulator import SimulationSettings, simulate
from pipeline.testing.aws_server import DUMMY_CREDENTIALS, REGION, free_port
from pipeline.testing.chaos import FaultRun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAZQSECRETTEST7K4X",
    "AWS_SECRET_ACCESS_KEY": "qW3rTy/SecretDummyKey+0123456789abcdEFGHijkl",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzSecretDummySessionToken0123456789zyxwvuTSRQ",
}


def needles() -> list:
    found = []
    for value in SECRETS.values():
        found += [value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)]
    # The distinctive middle of each, should something cut or wrap it.
    found += [value[4:-4] for value in SECRETS.values()]
    return sorted(set(found))


def leaks(texts: dict) -> dict:
    """{where: [secret found there]} over {where: text}."""
    return {
        where: [n for n in needles() if n in text]
        for where, text in texts.items()
        if any(n in text for n in needles())
    }


def env_with_secrets(**extra) -> dict:
    return {**os.environ, **SECRETS, "AWS_DEFAULT_REGION": REGION, **extra}


def test_the_search_finds_a_secret_however_it_is_written():
    secret = SECRETS["AWS_SECRET_ACCESS_KEY"]
    assert leaks(
        {"plain": f"key={secret}", "url": urllib.parse.quote(secret, safe=""), "clean": "nothing"}
    ) == {
        "plain": [n for n in needles() if n in f"key={secret}"],
        "url": [n for n in needles() if n in urllib.parse.quote(secret, safe="")],
    }


def everything_stored(endpoint: str, bucket: str, tables: list) -> dict:
    """{"s3://bucket/key" or "dynamodb:table": text} of every object and item."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[f"s3://{bucket}/{item['Key']}"] = body.decode("utf-8", errors="replace")
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
    for table in tables:
        items = [
            i for page in dynamodb.get_paginator("scan").paginate(TableName=table) for i in page["Items"]
        ]
        found[f"dynamodb:{table}"] = json.dumps(items)
    return found


def live_view_once(endpoint, bucket, name) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.apps.live_view",
            "--once",
            "--no-tty",
            f"--snapshot_path=s3://{bucket}/snapshots",
            f"--aws_endpoint_url={endpoint}",
            f"--level_table={name}-levels",
            f"--transitions_table={name}-transitions",
            f"--progress_table={name}-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env_with_secrets(),
    )
    return done.stdout + done.stderr


def dashboard_pages(endpoint, bucket, name, tmp_path) -> dict:
    """The dashboard's page, script and JSON, and its own log."""
    port = free_port()
    log_path = tmp_path / "dashboard.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.apps.dashboard",
                f"--snapshot_path=s3://{bucket}/snapshots",
                f"--aws_endpoint_url={endpoint}",
                f"--level_table={name}-levels",
                f"--port={port}",
            ],
            cwd=ROOT,
            env=env_with_secrets(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pages = {}
    try:
        deadline = time.monotonic() + 60
        for path in ("/api/current", "/", "/static/app.js", "/api/history?span=1d"):
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                        pages[f"dashboard {path}"] = response.read().decode("utf-8", errors="replace")
                    break
                except OSError:
                    assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[
                        -2000:
                    ]
                    time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    pages["dashboard log"] = log_path.read_text(errors="replace")
    return pages


@pytest.mark.slow
def test_no_output_of_a_run_holds_the_credentials(moto_endpoint, tmp_path):
    name = "secrets"
    stream = simulate(SimulationSettings(seed=31, players=30, duration_secs=600, malformed_share=0.05))
    run = FaultRun(moto_endpoint, moto_endpoint, name, str(tmp_path), env=SECRETS)
    run.create()
    run.put(stream.lines)
    run.start("--stop_when_idle_secs=3")
    try:
        finished = run.finish()
    finally:
        run.stop()
    assert finished.returncode == 0, finished.log[-3000:]
    texts = {"pipeline log": finished.log}

    # A run that fails loudly: its bucket gone (not retryable), and AWS unreachable (retried, then given up).
    for label, endpoint, bucket in (
        ("failed run (no bucket)", moto_endpoint, "no-such-bucket-here"),
        ("failed run (unreachable)", f"http://127.0.0.1:{free_port()}", run.bucket),
    ):
        failing = FaultRun(
            moto_endpoint,
            endpoint,
            name,
            str(tmp_path),
            env={**SECRETS, "LEVEL_ANALYTICS_AWS_RETRY_FOR_SECS": "3"},
        )
        failing.bucket = bucket
        failing.runs = 10 + len(texts)
        failing.start("--stop_when_idle_secs=3")
        try:
            failed = failing.finish(timeout_secs=300)
        finally:
            failing.stop()
        assert failed.returncode != 0
        texts[label] = failed.log

    stored = everything_stored(
        moto_endpoint, run.bucket, [f"{name}-levels", f"{name}-transitions", f"{name}-progress"]
    )
    assert any("/dead-letters/" in key for key in stored) and any(
        key.endswith("pipeline_status.json") for key in stored
    )
    texts.update(stored)
    texts["live view"] = live_view_once(moto_endpoint, run.bucket, name)
    texts.update(dashboard_pages(moto_endpoint, run.bucket, name, tmp_path))
    assert "level_player_counts" in texts["dashboard /api/current"] or texts["dashboard /api/current"].strip()
    assert leaks(texts) == {}


# --- The minimal IAM policy, enforced ---------------------------------------------------------

ACCOUNT = "123456789012"  # moto's default account


def readme_policy() -> dict:
    """The JSON block under "Minimal IAM policy" in the README, placeholders as written."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    block = text[text.index("Minimal IAM policy") :]
    block = block[block.index("```json") + len("```json") :]
    return json.loads(block[: block.index("```")])


def policy_for(name: str, bucket: str) -> dict:
    """The README's policy for this test's stream, tables and bucket. moto checks the
    actions of Kinesis and DynamoDB against the resource "*" (those services do not tell
    it which resource a call is on), so there the statements' resources become "*"; S3's
    are checked as written (bucket and object ARNs)."""
    text = json.dumps(readme_policy())
    for placeholder, value in (
        ("REGION", REGION),
        ("ACCOUNT", ACCOUNT),
        ("stream/enriched-good", f"stream/{name}"),
        ("table/level-state", f"table/{name}-levels"),
        ("table/transitions", f"table/{name}-transitions"),
        ("table/level-analytics-progress", f"table/{name}-progress"),
        ("my-level-analytics", bucket),
    ):
        text = text.replace(placeholder, value)
    policy = json.loads(text)
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if all(action.split(":")[0] in ("kinesis", "dynamodb") for action in actions):
            statement["Resource"] = "*"
    return policy


def set_auth(endpoint: str, after_requests: float) -> None:
    """moto's switch: enforce IAM (signatures and policies) once `after_requests` more
    requests were served (0: from now on; a huge number: off)."""
    request = urllib.request.Request(
        endpoint + "/moto-api/reset-auth",
        data=str(after_requests).encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


@pytest.mark.slow
def test_the_pipeline_runs_under_the_minimal_iam_policy_as_moto_enforces_it(tmp_path, monkeypatch):
    """A moto of its own with IAM enforced: an IAM user whose only permissions are the
    README's minimal policy runs the pipeline to the end, with outputs equal to the model;
    the same user is refused anything else (so enforcement was on); and its keys appear in
    no output."""
    from pipeline.testing.chaos import moto_process

    for variable, value in DUMMY_CREDENTIALS.items():  # the administrator's, for the setup and the checks
        monkeypatch.setenv(variable, value)
    name, bucket = "iam-minimal", "iam-minimal-bucket"
    stream = simulate(SimulationSettings(seed=33, players=30, duration_secs=600))
    with moto_process(str(tmp_path / "moto.log")) as (endpoint, _):
        admin = {"endpoint_url": endpoint, "region_name": REGION}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="level-analytics")
        key = iam.create_access_key(UserName="level-analytics")["AccessKey"]
        iam.put_user_policy(
            UserName="level-analytics",
            PolicyName="minimal",
            PolicyDocument=json.dumps(policy_for(name, bucket)),
        )
        run = FaultRun(endpoint, endpoint, name, str(tmp_path))
        run.bucket = bucket
        run.create()
        run.put(stream.lines)
        from pipeline.sinks.dynamodb import create_tables

        create_tables(
            boto3.client("dynamodb", **admin), f"{name}-levels", f"{name}-transitions", f"{name}-progress"
        )
        user_keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        user = {
            **admin,
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }

        set_auth(endpoint, 0)
        try:
            for refused in (
                lambda: boto3.client("s3", **user).put_object(Bucket="elsewhere", Key="k", Body=b"x"),
                lambda: boto3.client("dynamodb", **user).scan(TableName=f"{name}-levels"),
                lambda: boto3.client("kinesis", **user).put_record(
                    StreamName=name, Data=b"x", PartitionKey="k"
                ),
            ):
                with pytest.raises(Exception, match="AccessDenied|403"):
                    refused()
            run.env.update(user_keys)
            run.start("--stop_when_idle_secs=3")
            try:
                finished = run.finish()
            finally:
                run.stop()
        finally:
            set_auth(endpoint, 1e12)
        assert finished.returncode == 0, finished.log[-3000:]
        assert run.outputs_problems(stream.observations, stream.malformed) == []
        stored = everything_stored(
            endpoint, bucket, [f"{name}-levels", f"{name}-transitions", f"{name}-progress"]
        )
    texts = {"pipeline log": finished.log, **stored}
    found = {where: [v for v in user_keys.values() if v in text] for where, text in texts.items()}
    assert {where: hits for where, hits in found.items() if hits} == {}
