"""The run command's pieces, started as a user starts them (subprocesses on loopback):
the simulator sending live players to Kinesis, one pipeline on Prism, the dashboard,
the live view.

- A short run that finishes (--stop_when_idle_secs) leaves tables and snapshots equal
  to the reference model of what the simulator says it sent.
- A run that never ends publishes while it runs: windows, a dead-letter object, a
  status that refreshes; then Ctrl-C (SIGINT) stops everything: exit 0, a summary line,
  no traceback, no process left.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import boto3
import pytest

from pipeline.rules.observations import Observation
from pipeline.rules.times import parse_iso_ms
from pipeline.testing import outputs
from pipeline.testing.aws_server import REGION
from pipeline.testing.processes import descendants, is_alive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_SECS, WINDOW_SECS = 15, 10


def run_local_command(*extra):
    return [
        sys.executable,
        "-m",
        "pipeline.apps.run_local",
        "--players=25",
        "--event_gap_secs=2",
        f"--timeout_secs={TIMEOUT_SECS}",
        f"--window_secs={WINDOW_SECS}",
        "--max_out_of_orderness_secs=3",
        "--no-tty",
        "--dashboard_port=0",
        *extra,
    ]


@pytest.mark.slow
def test_a_short_live_run_publishes_exactly_the_model_of_what_was_sent(moto_endpoint, tmp_path):
    command = run_local_command(
        "--minutes=0.5",
        "--stop_when_idle_secs=3",
        f"--aws_endpoint_url={moto_endpoint}",
        "--stream_name=live-test",
        "--bucket=live-test",
        "--table_prefix=live-test-",
        f"--workdir={tmp_path}",
    )
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "stopped:" in result.stdout and "Traceback" not in result.stdout + result.stderr
    windows = [line for line in result.stdout.splitlines() if line.startswith("20") and "players=" in line]
    assert windows, result.stdout  # the live view printed windows while it ran

    with open(tmp_path / "truth.jsonl") as handle:
        sent = [Observation(**json.loads(line)) for line in handle]
    assert len(sent) > 100
    outputs.assert_outputs_equal_model(
        boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION),
        boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name=REGION),
        "live-test",
        ("live-test-transitions", "live-test-level-state"),
        sent,
        None,  # the simulator's bad lines are not counted here: none twice
        TIMEOUT_SECS,
        WINDOW_SECS,
    )


def wait_for(what, found, deadline_secs=180):
    deadline = time.monotonic() + deadline_secs
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {deadline_secs} s")


@pytest.mark.slow
def test_a_run_that_never_ends_publishes_while_it_runs_then_ctrl_c_stops_everything(tmp_path):
    process = subprocess.Popen(
        run_local_command(f"--workdir={tmp_path}"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stdout.readline()  # "AWS endpoint http://127.0.0.1:PORT (embedded moto); ..."
        endpoint = re.search(r"(http://127\.0\.0\.1:\d+)", first).group(1)
        dashboard = process.stdout.readline()
        assert re.match(r"dashboard: http://127\.0\.0\.1:\d+$", dashboard.strip()), dashboard
        seen = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            seen.append(line)
            if line.startswith("20") and "players=" in line:
                break  # the view shows a published window: everything is running
        else:
            raise AssertionError("no window published within 180 s:\n" + "".join(seen))

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        # Dead letters of a window are written as the stream goes, not when the run ends.
        dead_letter_objects = wait_for(
            "dead-letter object",
            lambda: s3.list_objects_v2(Bucket="level-analytics", Prefix="dead-letters/").get("Contents"),
        )
        assert dead_letter_objects[0]["Key"].endswith("Z.jsonl")

        def status():
            body = s3.get_object(Bucket="level-analytics", Key="snapshots/pipeline_status.json")["Body"]
            return json.loads(body.read())

        before = status()
        after = wait_for(
            "status refresh", lambda: (s := status())["status_time"] != before["status_time"] and s
        )
        assert after["state"] == "RUNNING" and after["engine"] == "PrismRunner"
        assert after["records_read"] > before["records_read"] > 0
        assert after["closed_until"] >= before["closed_until"]
        # The reader's watermark: past every instant the ledger closed, behind the clock.
        closed, watermark = parse_iso_ms(after["closed_until"]), parse_iso_ms(after["watermark"])
        assert closed <= watermark <= parse_iso_ms(after["status_time"])

        children = descendants(process.pid)
        assert len(children) >= 6  # moto, the simulator, the pipeline and its Prism, the dashboard, the view
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # an assertion failed first: stop it the clean way
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    assert process.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1].startswith("stopped: the pipeline read"), out[-1000:]
    assert "Traceback" not in out + err
    time.sleep(0.5)
    assert not [pid for pid in children if is_alive(pid)]
