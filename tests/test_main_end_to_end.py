"""pipeline.main over files of a generated multi-player stream, window by window
against the reference model."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from apache_beam.runners.runner import PipelineState

from pipeline.apps.simulator import SimulationSettings, simulate, write_lines
from pipeline.aws import AwsCallFailed
from pipeline.main import parse_options, run, s3_client_factory
from pipeline.rules.observations import BadLine, DeadLetter, line_event_time_ms, parse_enriched_line
from pipeline.rules.times import iso_utc, window_start
from pipeline.runtime.run_status import STATUS_OBJECT, RunStatus
from pipeline.testing.outputs import assert_history_equals_model, read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("timeout_secs,window_secs", [(300, 60), (120, 30)])
def test_generated_stream_matches_model_window_by_window(tmp_path, timeout_secs, window_secs):
    stream = simulate(SimulationSettings(seed=11, players=150, duration_secs=1500, timeout_secs=timeout_secs))
    # Two input files, to exercise the glob.
    half = len(stream.lines) // 2
    write_lines(str(tmp_path / "a.tsv"), stream.lines[:half])
    write_lines(str(tmp_path / "b.tsv"), stream.lines[half:])
    out, bad = tmp_path / "out", tmp_path / "bad"

    run(
        [
            f"--input={tmp_path}/*.tsv",
            f"--snapshot_path={out}",
            f"--dead_letter_path={bad}",
            f"--timeout_secs={timeout_secs}",
            f"--window_secs={window_secs}",
        ]
    )

    history = read_history(str(out))
    assert_history_equals_model(history, stream.observations, timeout_secs, window_secs)
    # The latest objects are the last window's, without the history fields.
    last = sorted(history)[-1]
    latest = json.loads((out / "level_information.json").read_text())
    assert latest["update_time"] == last and "window_end" not in latest
    # Every malformed line is in the dead letters, with a reason; nothing else is.
    dead = [json.loads(line) for path in bad.rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(dead) == stream.malformed > 0
    assert {d["reason"] for d in dead} <= {"not_utf8", "unparseable", "unusable_context"}
    assert all(d["position"].endswith(tuple(f":{n}" for n in range(1, len(stream.lines) + 1))) for d in dead)


def dead_letters_of(lines):
    """What the parser rejects, dated by the line's event time when it has one."""
    letters = []
    for line in lines:
        try:
            parse_enriched_line(line)
        except BadLine as bad:
            letters.append(
                DeadLetter(bad.reason, bad.detail, "", "", line_event_time_ms(line, "collector_tstamp"))
            )
    return letters


def test_rerun_writes_byte_identical_objects(tmp_path):
    stream = simulate(SimulationSettings(seed=3, players=40, duration_secs=600))
    write_lines(str(tmp_path / "events.tsv"), stream.lines)
    contents = []
    for attempt in ("one", "two"):
        out, bad = tmp_path / attempt, tmp_path / f"bad-{attempt}"
        run([f"--input={tmp_path}/events.tsv", f"--snapshot_path={out}", f"--dead_letter_path={bad}"])
        objects = {
            p.relative_to(tmp_path).as_posix().split("/", 1)[1]: p.read_bytes() for p in out.rglob("*.json")
        }
        status = json.loads(objects.pop(STATUS_OBJECT))  # about the run itself: its times differ
        assert status["records_read"] == len(stream.lines)
        objects.update({f"bad/{p.name}": p.read_bytes() for p in bad.rglob("*.jsonl")})
        contents.append(objects)
    assert contents[0] == contents[1] and len(contents[0]) > 4
    # Dead letters: one object per window, named by the window's end.
    assert {name for name in contents[0] if name.startswith("bad/")} == {
        f"bad/{iso_utc(window_start(d.event_time_ms, 60_000) + 60_000)}.jsonl"
        if d.event_time_ms
        else "bad/undated.jsonl"
        for d in dead_letters_of(stream.lines)
    }


def test_cli_help_lists_every_flag_with_default():
    result = run_main("--help")
    assert result.returncode == 0
    for flag in (
        "--input",
        "--snapshot_path",
        "--dead_letter_path",
        "--timeout_secs",
        "--window_secs",
        "--update_secs",
        "--event_time_field",
    ):
        assert flag in result.stdout
    assert "Default: 300" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--snapshot_path=x"], "--input"),
        (["--input=x", "--snapshot_path=x", "--window_secs=60", "--update_secs=7"], "does not divide"),
        (["--input=x", "--snapshot_path=x", "--timeout_secs=0"], "--timeout_secs must be positive"),
        (["--input=x", "--snapshot_path=x", "--no_such_flag=1"], "unknown"),
        (["--input=x", "--snapshot_path=x", "--event_time_field=etl_tstamp"], "invalid choice"),
        (["--input=x"], "--snapshot_path"),
    ],
)
def test_bad_options_stop_with_a_message_saying_what_to_change(args, message):
    result = run_main(*args)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--stream_name=no-such-stream", "--snapshot_path=x"],
            "Kinesis stream 'no-such-stream' does not exist",
        ),
        (
            ["--input=x", "--snapshot_path=s3://no-such-bucket/p"],
            "S3 bucket 'no-such-bucket' of --snapshot_path",
        ),
        (
            ["--input=x", "--dead_letter_path=s3://no-such-bucket/bad", "--snapshot_path=x"],
            "--dead_letter_path",
        ),
        (
            ["--input=x", "--write_dynamodb", "--level_table=no-such-table"],
            "DynamoDB table 'no-such-table' (--level_table) does not exist: create it, fix --level_table, "
            "or pass --create_tables",
        ),
    ],
)
def test_aws_resources_that_do_not_exist_stop_the_run_before_it_starts(moto_endpoint, args, message):
    result = run_main(*args, f"--aws_endpoint_url={moto_endpoint}")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_outputs_s3_client_takes_beams_s3_options_as_its_input_does():
    """--input on s3:// goes through Beam's S3 filesystem, the snapshots and dead letters
    through the project's own client: the same --s3_* keys must reach both."""
    options = parse_options(
        [
            "--input=s3://in/*.tsv",
            "--snapshot_path=s3://out/snapshots",
            "--aws_region=eu-west-1",
            "--s3_access_key_id=AKIAOUTPUTS",
            "--s3_secret_access_key=outputs-secret",
            "--s3_session_token=outputs-token",
        ]
    )
    client = s3_client_factory(options)()
    credentials = client._request_signer._credentials.get_frozen_credentials()
    assert (credentials.access_key, credentials.secret_key, credentials.token) == (
        "AKIAOUTPUTS",
        "outputs-secret",
        "outputs-token",
    )
    assert client.meta.region_name == "eu-west-1"


class InterruptedAsAClosedCall:
    """A job whose wait is interrupted by Ctrl-C (or another signal), reported as gRPC
    does on Flink: the interrupt becomes a closed call, not a KeyboardInterrupt."""

    def __init__(self, signum=signal.SIGINT):
        self.cancelled = False
        self._signum = signum

    def wait_until_finish(self):
        try:
            os.kill(os.getpid(), self._signum)
            time.sleep(5)
        except KeyboardInterrupt:
            raise RuntimeError("Stream removed (Channel closed!)") from None
        raise AssertionError(f"signal {self._signum} did not interrupt the wait")

    def cancel(self):
        self.cancelled = True


class FailingJob(InterruptedAsAClosedCall):
    def wait_until_finish(self):
        raise RuntimeError("Stream removed (Channel closed!)")


class QuietStatus:
    def __init__(self):
        self.published = []

    def stop(self):
        pass

    def publish(self, pipeline_result, state, **kwargs):
        self.published.append((state, kwargs))


@pytest.mark.parametrize(
    "signum, default, said",
    [(signal.SIGINT, signal.default_int_handler, "Ctrl-C"), (signal.SIGTERM, signal.SIG_DFL, "SIGTERM")],
)
def test_ctrl_c_or_sigterm_stops_the_job_whatever_the_runner_turns_it_into(signum, default, said):
    """SIGTERM is a supervisor's Ctrl-C (systemd, docker stop): its default would end the
    process without its exit handlers, leaving Flink's job server running."""
    from pipeline.main import _wait_unless_interrupted

    before = signal.signal(signum, default)  # earlier tests may set one
    try:
        job, status = InterruptedAsAClosedCall(signum), QuietStatus()
        with pytest.raises(SystemExit, match=rf"stopped \({said}\)"):
            _wait_unless_interrupted(job, status, committed_ms=lambda: 1_796_205_660_000)
        assert job.cancelled
        # The last status says so, with the checkpoint committed by then.
        assert status.published == [("CANCELLED", {"finished": True, "committed_ms": 1_796_205_660_000})]
        assert signal.getsignal(signum) is default  # put back
    finally:
        signal.signal(signum, before)


def test_ctrl_c_still_reaches_a_handler_beam_installed():
    """Beam's portable runner installs a SIGINT handler that stops its job server (which
    closes the call the wait is in) before interrupting: it still runs, and the stop
    is still a Ctrl-C."""
    from pipeline.main import _wait_unless_interrupted

    called = []

    def beams(signum, frame):
        called.append(signum)
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, beams)
    try:
        job = InterruptedAsAClosedCall()
        with pytest.raises(SystemExit, match=r"stopped \(Ctrl-C\)"):
            _wait_unless_interrupted(job, QuietStatus(), committed_ms=lambda: None)
        assert signal.getsignal(signal.SIGINT) is beams  # put back
    finally:
        signal.signal(signal.SIGINT, before)
    assert called == [signal.SIGINT] and job.cancelled


class LeftRunningAfterAGiveUp:
    """A job one of whose steps gave up (AwsCallFailed, made by a worker in this process,
    as on Prism) and that then keeps running, or ends `after_secs` later by itself."""

    def __init__(self, after_secs=10.0):
        self.cancelled = False
        self._after_secs = after_secs

    def wait_until_finish(self):
        AwsCallFailed("UpdateItem on level-state failed (still failing after 15 s and 9 attempts)")
        time.sleep(self._after_secs)
        return PipelineState.DONE

    def cancel(self):
        self.cancelled = True


@pytest.fixture
def quick_give_up_watch(monkeypatch):
    import pipeline.main

    monkeypatch.setattr(pipeline.main, "GIVE_UP_GRACE_SECS", 0.5)
    signalled = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: signalled.append(signum))
    yield signalled
    signal.signal(signal.SIGTERM, before)


def test_a_job_left_running_after_a_step_gave_up_is_stopped_and_says_why(quick_give_up_watch):
    """Seen once in about 25 CI runs on Prism: a step gave up and the job stayed RUNNING."""
    from pipeline.main import _wait_unless_interrupted

    job, status = LeftRunningAfterAGiveUp(), QuietStatus()
    with pytest.raises(
        SystemExit, match=r"(?s)AwsCallFailed: UpdateItem on level-state failed .*cancelled"
    ) as ended:
        _wait_unless_interrupted(job, status, committed_ms=lambda: None, give_ups_since=time.monotonic())
    assert "restart with the same flags" in str(ended.value)
    assert job.cancelled and status.published[0][0] == "CANCELLED" and quick_give_up_watch == [signal.SIGTERM]


def test_the_run_status_giving_up_does_not_stop_the_run(quick_give_up_watch):
    """The status object is never worth stopping the run for (RunStatus.follow)."""
    from pipeline.main import _wait_unless_interrupted

    class StatusGaveUp(LeftRunningAfterAGiveUp):
        def wait_until_finish(self):
            made = threading.Thread(
                target=AwsCallFailed, args=("writing the status failed",), name=RunStatus.THREAD_NAME
            )
            made.start()
            made.join()
            time.sleep(2.0)
            return PipelineState.DONE

    job = StatusGaveUp()
    assert (
        _wait_unless_interrupted(job, QuietStatus(), lambda: None, give_ups_since=time.monotonic())
        == PipelineState.DONE
    )
    assert not job.cancelled and quick_give_up_watch == []


@pytest.mark.parametrize("watched", [True, False], ids=["ends-within-the-grace", "not-watched-flink"])
def test_a_job_that_ends_by_itself_after_a_give_up_is_left_alone(quick_give_up_watch, watched):
    from pipeline.main import _wait_unless_interrupted

    job = LeftRunningAfterAGiveUp(after_secs=0.2 if watched else 2.0)
    since = time.monotonic() if watched else None
    assert (
        _wait_unless_interrupted(job, QuietStatus(), lambda: None, give_ups_since=since) == PipelineState.DONE
    )
    time.sleep(1.5)  # a watch left behind would signal now
    assert not job.cancelled and quick_give_up_watch == []


def test_a_failure_without_ctrl_c_is_raised():
    from pipeline.main import _wait_unless_interrupted

    job = FailingJob()
    with pytest.raises(RuntimeError, match="Channel closed"):
        _wait_unless_interrupted(job, QuietStatus(), committed_ms=lambda: None)
    assert not job.cancelled
