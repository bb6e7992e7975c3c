"""The live view: its pure displays on fixed states, and `python -m pipeline.apps.live_view`
as a subprocess against moto's real server (tables and an S3 bucket) or a directory."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid

import boto3
import pytest

from pipeline.apps import live_view
from pipeline.apps.live_view import BAR, ViewState, render_frame, status_line
from pipeline.apps.published import LevelItem
from pipeline.rules.snapshot_format import figures_line
from pipeline.runtime.run_status import RunStatus, run_status
from pipeline.sinks.dynamodb import create_tables
from pipeline.sources.kinesis import FINISHED_WATERMARK_MS
from pipeline.testing.aws_server import REGION

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW_MS = 1_795_363_512_000  # 2026-11-22T16:05:12Z
COMMITTED_MS = NOW_MS - 12_000  # watermark lag 12 s
RUN_TIMEOUT_SECS = 30

TRANSITION_INFO = {
    "update_time": "2026-11-22T16:05:00Z",
    "update_id": "0f4b1c9e-0000-5000-8000-000000000000",
    "update_interval_secs": 60,
    "transitions": [
        {"from": None, "to": "gems-in-the-deep", "count": 12},
        {"from": "dungeons-of-kithgard", "to": "gems-in-the-deep", "count": 20},
        {"from": "kithgard-gates", "to": None, "count": 3},
    ],
}
PIPELINE_STATUS = {
    "status_time": "2026-11-22T16:05:10Z",
    "state": "RUNNING",
    "engine": "PrismRunner",
    "run_started": "2026-11-22T16:00:00Z",
    "run_finished": None,
    "watermark": "2026-11-22T16:05:04.500Z",  # 5.5 s behind the status_time
    "closed_until": "2026-11-22T16:05:05Z",  # lag 7 s at NOW_MS
    "committed_until": "2026-11-22T16:05:00Z",
    "stream_records_per_sec": 31.2,
    "pipeline_records_per_sec": 45.5,
    "behind_latest_ms": 2000,
    "records_read": 312,
    "observations": 300,
    "transitions": 35,
    "dead_letters": {"late": 2, "unparseable": 1},
    "dynamodb_writes": 120,
    "dynamodb_retries": 4,
    "dynamodb_rejected_repeats": 0,
    "s3_puts": 8,
}
LEVELS = {"gems-in-the-deep": 17, "dungeons-of-kithgard": 9, "kithgard-gates": 4, "shadow-guard": 2, "old": 0}
PUBLISHED_MS = NOW_MS - 6_000  # the last window (ending 16:05:00) was published at 16:05:06
EXPECTED_LINE = (
    "2026-11-22T16:05:00Z players=32 top=gems-in-the-deep:17,dungeons-of-kithgard:9,kithgard-gates:4,…"
    " transitions=35 published_after=6s stream/s=31.2 pipeline/s=45.5 lag=7s watermark_lag=5s"
    " dead_letters=3 ddb_writes=120 throttles=4"
)


def fixed_state(**changes) -> ViewState:
    state = ViewState(
        levels=tuple(LevelItem(level, n, COMMITTED_MS) for level, n in LEVELS.items()),
        transition_info=TRANSITION_INFO,
        status=PIPELINE_STATUS,
        committed_ms=COMMITTED_MS,
        window_published_ms=PUBLISHED_MS,
    )
    return state._replace(**changes)


def level_rows(frame: str) -> dict[str, str]:
    """The frame's level lines, {level: line}, in frame order."""
    return {line.split()[0]: line for line in frame.splitlines() if BAR in line}


# --- pure functions ---------------------------------------------------------------------


def test_frame_lists_levels_busiest_first_with_proportional_bars_and_hides_empty_levels():
    state = fixed_state(
        levels=(LevelItem("a", 10), LevelItem("b", 0), LevelItem("c", 40), LevelItem("d", 20))
    )

    frame = render_frame(state, width=80, now_ms=NOW_MS)

    rows = level_rows(frame)
    assert list(rows) == ["c", "d", "a"]  # busiest first, "b" (0 players) hidden
    bars = {level: line.count(BAR) for level, line in rows.items()}
    assert bars["c"] > 40  # the busiest fills the width left after name and count
    assert all(len(line) <= 80 for line in frame.splitlines())
    assert bars["d"] == round(bars["c"] / 2)
    assert bars["a"] == round(bars["c"] / 4)
    assert "total players: 70" in frame.splitlines()


def test_frame_shows_the_top_ten_transitions_with_enter_and_leave():
    entries = [{"from": f"l{i:02d}", "to": f"l{i + 1:02d}", "count": i} for i in range(1, 13)]
    entries += [{"from": None, "to": "gems-in-the-deep", "count": 50}, {"from": "a", "to": None, "count": 30}]
    state = fixed_state(transition_info={**TRANSITION_INFO, "transitions": entries})

    lines = render_frame(state, width=100, now_ms=NOW_MS).splitlines()

    start = lines.index(
        "top transitions, window ending 2026-11-22T16:05:00Z (60 s), published 6s after its end"
    )
    shown = [line.split() for line in lines[start + 1 : start + 11]]
    assert shown[0] == ["(enter)", "→", "gems-in-the-deep", "50"]
    assert shown[1] == ["a", "→", "(leave)", "30"]
    assert [row[-1] for row in shown[2:]] == ["12", "11", "10", "9", "8", "7", "6", "5"]
    assert lines[start + 11] == ""  # only ten: counts 1 to 4 are left out


def test_frame_shows_the_pipeline_status_and_the_lag():
    frame = render_frame(fixed_state(), width=120, now_ms=NOW_MS)

    assert "events/s: stream 31.2, pipeline 45.5   behind the stream 2s" in frame
    assert "lag 7s (counts as of 2026-11-22T16:05:05Z, committed until 2026-11-22T16:05:00Z)" in frame
    assert "watermark lag 5s (the event time the reader has passed)" in frame
    assert "window ending 2026-11-22T16:05:00Z (60 s), published 6s after its end" in frame
    assert "dead letters 3 (late 2, unparseable 1)" in frame
    assert "dynamodb writes 120   throttles 4   rejected repeats 0   s3 puts 8" in frame
    assert "pipeline RUNNING on PrismRunner since 2026-11-22T16:00:00Z   records read 312" in frame


def test_frame_cut_to_the_terminal_height():
    levels = tuple(LevelItem(f"level-{i:02d}", 100 - i) for i in range(40))

    frame = render_frame(fixed_state(levels=levels), width=80, now_ms=NOW_MS, height=30)

    assert len(frame.splitlines()) <= 29
    assert "more levels" in frame
    assert list(level_rows(frame))[0] == "level-00"


def test_missing_status_and_checkpoint_show_dashes():
    levels = tuple(LevelItem(level, n) for level, n in LEVELS.items())  # no asOf either
    state = fixed_state(
        status={"records_read": 5}, committed_ms=None, levels=levels, window_published_ms=None
    )

    assert status_line(state, NOW_MS) == (
        "2026-11-22T16:05:00Z players=32 top=gems-in-the-deep:17,dungeons-of-kithgard:9,kithgard-gates:4,…"
        " transitions=35 published_after=— stream/s=— pipeline/s=— lag=— watermark_lag=—"
        " dead_letters=— ddb_writes=— throttles=—"
    )
    frame = render_frame(state, width=100, now_ms=NOW_MS)
    assert "events/s: stream —, pipeline —   behind the stream —" in frame
    assert "lag — (counts as of —, committed until —)" in frame
    assert "watermark lag — (" in frame


def test_lag_follows_the_fresher_of_the_status_and_the_level_table():
    newer_table = tuple(LevelItem(level, n, NOW_MS - 3_000) for level, n in LEVELS.items())
    assert live_view.lag_ms(fixed_state(levels=newer_table), NOW_MS) == 3_000
    assert live_view.lag_ms(fixed_state(), NOW_MS) == 7_000  # the status's closed_until is newer


def test_status_line_of_a_fixed_state():
    assert status_line(fixed_state(), NOW_MS) == EXPECTED_LINE


def test_lag_formats():
    assert [live_view.format_duration(ms) for ms in (12_000, 185_000, 7_380_000, 90_000_000, -3_000)] == [
        "12s",
        "3m05s",
        "2h03m",
        "1d01h",
        "-3s",
    ]


def test_nothing_published_is_a_waiting_frame_with_its_errors():
    empty = ViewState(levels=(), transition_info=None, status=None, committed_ms=None, errors=("x: boom",))

    assert status_line(empty, NOW_MS) == "waiting for the pipeline… nothing published yet error=x: boom"
    frame = render_frame(empty, width=80, now_ms=NOW_MS)
    assert "waiting for the pipeline… nothing published yet" in frame
    assert "error: x: boom" in frame


# --- against moto's server and a directory ---------------------------------------------


def aws_environment() -> dict:
    # The fixture's dummy credentials; a fixed terminal size for the frames.
    return {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "120", "LINES": "50"}


def live_view_command(*flags) -> list[str]:
    return [sys.executable, "-m", "pipeline.apps.live_view", *flags]


def run_live_view(*flags) -> subprocess.CompletedProcess:
    return subprocess.run(
        live_view_command(*flags),
        cwd=REPO,
        env=aws_environment(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=RUN_TIMEOUT_SECS,
    )


def publish_tables(endpoint: str) -> tuple[str, str]:
    """Fresh level and progress tables (unique names: the moto server is shared) with the fixture."""
    suffix = uuid.uuid4().hex[:8]
    level_table, progress_table = f"level-state-{suffix}", f"level-analytics-progress-{suffix}"
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
    create_tables(client, level_table, f"transitions-{suffix}", progress_table)
    for level, players in LEVELS.items():
        client.put_item(
            TableName=level_table,
            Item={
                "levelId": {"S": level},
                "playerCount": {"N": str(players)},
                "asOf": {"N": str(COMMITTED_MS)},
                "updatedAt": {"S": "2026-11-22T16:05:00Z"},
            },
        )
    client.put_item(
        TableName=progress_table,
        Item={"pipeline": {"S": "level-analytics"}, "asOf": {"N": str(COMMITTED_MS)}, "levels": {"S": "{}"}},
    )
    return level_table, progress_table


def write_snapshot_dir(root) -> str:
    (root / "transition_information.json").write_text(json.dumps(TRANSITION_INFO))
    os.utime(root / "transition_information.json", (PUBLISHED_MS / 1000, PUBLISHED_MS / 1000))
    (root / "pipeline_status.json").write_text(json.dumps(PIPELINE_STATUS))
    return str(root)


def test_no_tty_once_reads_tables_and_s3(moto_endpoint):
    level_table, progress_table = publish_tables(moto_endpoint)
    bucket = f"snapshots-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="live/transition_information.json", Body=json.dumps(TRANSITION_INFO))
    s3.put_object(Bucket=bucket, Key="live/pipeline_status.json", Body=json.dumps(PIPELINE_STATUS))

    result = run_live_view(
        "--no-tty",
        "--once",
        f"--now_ms={NOW_MS}",
        f"--aws_endpoint_url={moto_endpoint}",
        f"--aws_region={REGION}",
        f"--level_table={level_table}",
        f"--progress_table={progress_table}",
        f"--snapshot_path=s3://{bucket}/live/",
    )

    assert result.returncode == 0, result.stderr
    # Published when the test put the object, not in the fixture's 2026: only the rest is fixed.
    modified = s3.head_object(Bucket=bucket, Key="live/transition_information.json")["LastModified"]
    published_after = live_view.format_duration(int(modified.timestamp() * 1000) - (NOW_MS - 12_000))
    assert (
        result.stdout
        == EXPECTED_LINE.replace("published_after=6s", f"published_after={published_after}") + "\n"
    )


def test_tty_once_frame_from_tables_and_a_directory(moto_endpoint, tmp_path):
    level_table, progress_table = publish_tables(moto_endpoint)

    result = run_live_view(
        "--once",
        f"--now_ms={NOW_MS}",
        f"--aws_endpoint_url={moto_endpoint}",
        f"--level_table={level_table}",
        f"--progress_table={progress_table}",
        f"--snapshot_path={write_snapshot_dir(tmp_path)}",
    )

    assert result.returncode == 0, result.stderr
    frame = result.stdout
    assert list(level_rows(frame)) == [
        "gems-in-the-deep",
        "dungeons-of-kithgard",
        "kithgard-gates",
        "shadow-guard",
    ]
    assert "players per level, as of 2026-11-22T16:05:00Z" in frame
    assert "total players: 32" in frame
    assert "(enter) → gems-in-the-deep" in frame and "kithgard-gates → (leave)" in frame
    assert "lag 7s (counts as of 2026-11-22T16:05:05Z" in frame
    assert "error" not in frame


def test_nothing_published_yet_prints_a_waiting_line(moto_endpoint, tmp_path):
    missing = uuid.uuid4().hex[:8]

    result = run_live_view(
        "--no-tty",
        "--once",
        f"--aws_endpoint_url={moto_endpoint}",
        f"--level_table=no-such-table-{missing}",
        f"--progress_table=no-such-progress-{missing}",
        f"--snapshot_path={tmp_path}",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "waiting for the pipeline… nothing published yet\n"
    assert result.stderr == ""


def test_tty_mode_clears_the_screen_before_each_frame(moto_endpoint, tmp_path):
    missing = uuid.uuid4().hex[:8]

    result = run_live_view(
        "--refresh_secs=0.2",
        "--duration_secs=0.7",
        f"--aws_endpoint_url={moto_endpoint}",
        f"--level_table=no-such-table-{missing}",
        f"--progress_table=no-such-progress-{missing}",
        f"--snapshot_path={tmp_path}",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(live_view.CLEAR_SCREEN)
    frames = result.stdout.split(live_view.CLEAR_SCREEN)[1:]
    assert len(frames) >= 2  # redrawn every refresh
    assert all("waiting for the pipeline… nothing published yet" in frame for frame in frames)


def test_missing_bucket_is_shown_as_an_error_not_raised(moto_endpoint):
    level_table, progress_table = publish_tables(moto_endpoint)

    result = run_live_view(
        "--no-tty",
        "--once",
        f"--now_ms={NOW_MS}",
        f"--aws_endpoint_url={moto_endpoint}",
        f"--level_table={level_table}",
        f"--progress_table={progress_table}",
        f"--snapshot_path=s3://no-such-bucket-{uuid.uuid4().hex[:8]}",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("— players=32 top=gems-in-the-deep:17,")
    assert "lag=12s" in result.stdout
    assert "error=s3://no-such-bucket-" in result.stdout and "NoSuchBucket" in result.stdout


def test_no_tty_prints_a_line_per_new_window_and_stops_cleanly_on_ctrl_c(moto_endpoint, tmp_path):
    level_table, progress_table = publish_tables(moto_endpoint)
    snapshot_dir = write_snapshot_dir(tmp_path)
    process = subprocess.Popen(
        live_view_command(
            "--no-tty",
            "--refresh_secs=0.1",
            f"--now_ms={NOW_MS}",
            f"--aws_endpoint_url={moto_endpoint}",
            f"--level_table={level_table}",
            f"--progress_table={progress_table}",
            f"--snapshot_path={snapshot_dir}",
        ),
        cwd=REPO,
        env=aws_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        assert lines.get(timeout=RUN_TIMEOUT_SECS) == EXPECTED_LINE + "\n"
        next_window = {**TRANSITION_INFO, "update_time": "2026-11-22T16:06:00Z", "transitions": []}
        (tmp_path / "transition_information.json").write_text(json.dumps(next_window))
        second = lines.get(timeout=RUN_TIMEOUT_SECS)
        assert second.startswith("2026-11-22T16:06:00Z players=32 ")
        assert " transitions=0 " in second
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=RUN_TIMEOUT_SECS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert lines.empty()  # the same window is not printed again on every refresh
    assert "Traceback" not in process.stderr.read()


def test_duration_stops_the_view(tmp_path):
    result = run_live_view(
        "--no-tty",
        "--refresh_secs=0.2",
        "--duration_secs=0.5",
        "--aws_endpoint_url=http://127.0.0.1:9",  # nothing listens: shown, not raised
        f"--snapshot_path={write_snapshot_dir(tmp_path)}",
    )

    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(
        "2026-11-22T16:05:00Z players=— top=— transitions=35 published_after=6s stream/s=31.2 pipeline/s=45.5 lag="
    )
    assert "error=level-state: EndpointConnectionError" in line


@pytest.mark.parametrize("flags", [["--refresh_secs=0"], ["--duration_secs=-1"], ["--no_such_flag"]])
def test_bad_flags_stop_with_a_usage_error(flags):
    with pytest.raises(SystemExit) as stopped:
        live_view.parse_args(flags)
    assert stopped.value.code == 2


def test_the_watermark_lag_is_measured_when_the_status_was_written():
    no_time = {key: value for key, value in PIPELINE_STATUS.items() if key != "status_time"}
    assert live_view.watermark_lag_ms(fixed_state(), NOW_MS) == 5_500
    assert live_view.watermark_lag_ms(fixed_state(status=no_time), NOW_MS) == 7_500


def test_the_status_watermark_is_the_earliest_of_the_readers_still_reading():
    """One gauge per root shard; a reader that finished (its shards merged away, or the
    stop rule) no longer holds the watermark back, and no longer counts."""
    totals = {
        "kinesis_watermark_ms_shardId-000": NOW_MS - 6_000,
        "kinesis_watermark_ms_shardId-001": NOW_MS - 5_000,
        "kinesis_watermark_ms_shardId-002": FINISHED_WATERMARK_MS,
    }
    assert run_status(totals, NOW_MS)["watermark"] == "2026-11-22T16:05:06Z"  # NOW_MS - 6 s
    assert (
        run_status({"kinesis_watermark_ms_shardId-002": FINISHED_WATERMARK_MS}, NOW_MS)["watermark"] is None
    )


def test_figures_a_runner_did_not_report_are_shown_as_unknown_never_as_0():
    """Flink's 2.62 job server reports a job's metrics only when it ends: while it runs,
    the status's figures from metrics are null, and the view and the closing line say
    they are unknown instead of showing nothing read and nothing written."""
    status = run_status({}, NOW_MS, state="RUNNING", engine="FlinkRunner", committed_ms=COMMITTED_MS)
    for figure in ("records_read", "transitions", "dead_letters", "dynamodb_writes", "s3_puts"):
        assert status[figure] is None, figure
    assert status["committed_until"] is not None  # read from the progress table, not from metrics
    line = status_line(fixed_state(status=status), NOW_MS)
    assert "dead_letters=— ddb_writes=— throttles=—" in line and "pipeline/s=—" in line
    frame = render_frame(fixed_state(status=status), 100, NOW_MS)
    assert "records read —" in frame and "dynamodb writes —" in frame
    assert figures_line(status).startswith("reported no figures (FlinkRunner gave no metrics")

    counted = run_status({"lines_read": 7, "transitions": 3}, NOW_MS, state="RUNNING")
    assert counted["records_read"] == 7 and counted["dynamodb_writes"] == 0  # reported: 0 is 0
    assert figures_line(counted) == "read 7 records, 3 transitions, 0 dead letters, 0 DynamoDB writes"


def test_the_last_status_is_written_when_the_engine_is_gone():
    """After Ctrl-C the engine is gone (Prism, Flink's job server) and asking for metrics
    fails: the last status still says CANCELLED, what was committed and the figures last
    reported; while the job runs, the same failure is raised to the status thread, which
    reports it."""
    from apache_beam.metrics.execution import MetricKey, MetricResult
    from apache_beam.metrics.metricbase import MetricName

    from pipeline.runtime import metrics

    class Metrics:
        def query(self, _filter):
            key = MetricKey("ParseEvents", MetricName(metrics.NAMESPACE, "lines_read"))
            return {"counters": [MetricResult(key, 41, 41)], "gauges": []}

    class Job:
        gone = False

        def metrics(self):
            if self.gone:
                raise RuntimeError("Channel closed prematurely.")
            return Metrics()

    written, job = [], Job()
    status = RunStatus(written.append, "PrismRunner", 1.0, clock=lambda: NOW_MS / 1000)
    assert status.publish(job, "RUNNING")["records_read"] == 41
    job.gone = True
    with pytest.raises(RuntimeError, match="Channel closed"):
        status.publish(job, "RUNNING")
    last = status.publish(job, "CANCELLED", finished=True, committed_ms=COMMITTED_MS)
    assert json.loads(written[-1]) == last
    assert last["state"] == "CANCELLED" and last["run_finished"] is not None
    assert last["committed_until"] is not None and last["records_read"] == 41


def test_on_flink_the_figures_come_from_flinks_rest_api_while_the_job_server_has_none():
    """The job server answers no metrics while the job runs; Flink's REST API lists each
    Beam metric per operator and subtask (ids as the embedded Flink gave them): counters
    add up, gauges (one per shard or key) are taken once. Not there yet: not reported."""
    from pipeline.runtime.flink_metrics import totals_of

    stage = "0.[4]{ReadKinesis__AllDeadLetters__ParseEvents__TrackPlayers}"
    flink = totals_of(
        [
            {"id": f"{stage}.level_analytics_lines_read", "value": "1200"},
            {"id": f"{stage.replace('0.', '1.', 1)}.level_analytics_lines_read", "value": "151"},
            {"id": f"{stage}.level_analytics_dead_letters_unparseable", "value": "8"},
            {
                "id": f"{stage}.level_analytics_kinesis_watermark_ms_shardId-000000000000",
                "value": "1796413000000",
            },
            {"id": f"{stage}.numRecordsIn", "value": "99"},  # Flink's own: not the pipeline's
            {"id": "0.[2]{KeepLedger__Publish}.level_analytics_dynamodb_writes", "value": "232.0"},
            {
                "id": "0.[2]{KeepLedger__Publish}.level_analytics_ledger_closed_until_ms",
                "value": "1796412990000",
            },
        ]
    )
    assert flink == {
        "lines_read": 1351,
        "dead_letters_unparseable": 8,
        "kinesis_watermark_ms_shardId-000000000000": 1796413000000,
        "dynamodb_writes": 232,
        "ledger_closed_until_ms": 1796412990000,
    }

    class NoMetricsYet:  # the job server while a job runs
        def metrics(self):
            class Empty:
                def query(self, _filter):
                    return {"counters": [], "gauges": []}

            return Empty()

    answers = [flink, RuntimeError("Connection refused")]

    def rest():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    written = []
    status = RunStatus(written.append, "FlinkRunner", 1.0, clock=lambda: NOW_MS / 1000, other_totals=rest)
    running = status.publish(NoMetricsYet(), "RUNNING")
    assert running["records_read"] == 1351 and running["dynamodb_writes"] == 232
    assert running["dead_letters"] == {"unparseable": 8} and running["watermark"] is not None
    assert status.publish(NoMetricsYet(), "RUNNING")["records_read"] is None  # REST not answering
