"""Live view: what the pipeline has PUBLISHED, redrawn every few seconds.

    python -m pipeline.apps.live_view --snapshot_path s3://bucket/prefix [--aws_endpoint_url URL]
    python -m pipeline.apps.live_view --snapshot_path out/snapshots --no-tty   # one line per window

It reads what any reader of the pipeline's outputs sees (the DynamoDB tables and the
JSON objects under --snapshot_path), never the pipeline's memory, so a number shown
here is a number that really landed. Sources:

- players per level: the level table (levelId, playerCount, asOf, updatedAt);
- the last window's transitions: {snapshot_path}/transition_information.json;
- events/s (the stream's and the pipeline's), dead letters, DynamoDB writes and throttles,
  how far the pipeline has closed: {snapshot_path}/pipeline_status.json, rewritten by the
  running pipeline every few seconds;
- lag: now - the latest update instant the pipeline closed (event time), from the
  status; it counts on the --update_secs grid, so it reads up to that much more than
  the watermark's lag: now - the Kinesis reader's watermark, from the status;
  committed: asOf of the checkpoint in the progress table.

Anything not there yet is shown as "—"; when nothing at all is there, a "waiting for
the pipeline…" frame. AWS and read errors are shown in the frame, one line each.

The display is pure functions of a ViewState (render_frame, status_line), kept apart
from the thin readers (pipeline.apps.published, read_json_object) so they can be
tested without AWS.
"""

import argparse
import json
import os
import shutil
import sys
import time
from typing import NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.apps.published import LevelItem, read_committed_ms, read_level_table
from pipeline.aws import ClientFactory, error_code
from pipeline.rules.snapshot_format import STATUS_OBJECT, TRANSITIONS_LATEST
from pipeline.rules.tables import LEVEL_TABLE, PROGRESS_TABLE, TRANSITIONS_TABLE
from pipeline.rules.times import iso_utc, parse_iso_ms

CLEAR_SCREEN = "\x1b[H\x1b[2J"
DASH = "—"
WAITING = "waiting for the pipeline… nothing published yet"
TOP_TRANSITIONS = 10
TOP_LEVELS_IN_LINE = 3
BAR = "█"


class ViewState(NamedTuple):
    """Everything one frame shows, as read. None = not there (yet)."""

    levels: tuple[LevelItem, ...] | None  # None: the level table does not exist
    transition_info: dict | None  # transition_information.json
    status: dict | None  # pipeline_status.json
    committed_ms: int | None  # asOf of the checkpoint in the progress table
    errors: tuple[str, ...] = ()  # one line per source that failed
    window_published_ms: int | None = None  # when transition_information.json was last written


# --- pure helpers -----------------------------------------------------------------------


def _count(value) -> int | None:
    """A count from the status object; None when missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def format_duration(ms: int) -> str:
    """12s, 3m05s, 2h03m, 4d01h (negative when the checkpoint is ahead of the clock)."""
    sign = "-" if ms < 0 else ""
    secs = abs(ms) // 1000
    if secs < 60:
        return f"{sign}{secs}s"
    if secs < 3600:
        return f"{sign}{secs // 60}m{secs % 60:02d}s"
    if secs < 86400:
        return f"{sign}{secs // 3600}h{secs % 3600 // 60:02d}m"
    return f"{sign}{secs // 86400}d{secs % 86400 // 3600:02d}h"


def _or_dash(value) -> str:
    return DASH if value is None else str(value)


def is_published(state: ViewState) -> bool:
    """Has the pipeline written anything yet? (An empty table is nothing.)"""
    return bool(state.levels) or any(
        part is not None for part in (state.transition_info, state.status, state.committed_ms)
    )


def busiest_first(levels) -> list[LevelItem]:
    """Levels with players, most players first (ties by name, so frames do not flicker)."""
    return sorted((item for item in levels or () if item.players > 0), key=lambda i: (-i.players, i.level))


def total_players(state: ViewState) -> int | None:
    if state.levels is None:
        return None
    return sum(item.players for item in state.levels if item.players > 0)


def window_end(state: ViewState) -> str | None:
    """update_time of the last published window (its end, event time)."""
    value = (state.transition_info or {}).get("update_time")
    return value if isinstance(value, str) else None


def _transitions(state: ViewState) -> list[dict] | None:
    entries = (state.transition_info or {}).get("transitions")
    if not isinstance(entries, list):
        return None
    return [e for e in entries if isinstance(e, dict) and _count(e.get("count")) is not None]


def transitions_in_window(state: ViewState) -> int | None:
    """How many transitions happened in the last window (the sum of the counts)."""
    entries = _transitions(state)
    return None if entries is None else sum(_count(e["count"]) for e in entries)


def top_transitions(state: ViewState, limit: int = TOP_TRANSITIONS) -> list[tuple[str, int]]:
    """(label, count), most frequent first; null from/to is outside the game."""
    labelled = [
        (f"{e.get('from') or '(enter)'} → {e.get('to') or '(leave)'}", _count(e["count"]))
        for e in _transitions(state) or ()
    ]
    return sorted(labelled, key=lambda pair: (-pair[1], pair[0]))[:limit]


def _rate(status: dict | None, key: str) -> float | None:
    value = (status or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def stream_rate(status: dict | None) -> float | None:
    """Records per second arriving in the stream (over what the pipeline read lately)."""
    return _rate(status, "stream_records_per_sec")


def pipeline_rate(status: dict | None) -> float | None:
    """Records per second the pipeline read lately (higher than the stream's when catching up)."""
    return _rate(status, "pipeline_records_per_sec")


def _or_duration(ms: int | None) -> str:
    return DASH if ms is None else format_duration(ms)


def _format_rate(rate: float | None) -> str:
    return DASH if rate is None else f"{rate:.1f}"


def dead_letters(status: dict | None) -> dict[str, int] | None:
    reasons = (status or {}).get("dead_letters")
    if not isinstance(reasons, dict):
        return None
    return {str(reason): n for reason, n in sorted(reasons.items()) if _count(n) is not None}


def _status_count(status: dict | None, key: str) -> int | None:
    return _count((status or {}).get(key))


def closed_until_ms(state: ViewState) -> int | None:
    """The latest update instant the pipeline closed: from its status or the newest asOf
    in the level table, whichever is newer (the table is read more often)."""
    found = [parse_iso_ms((state.status or {}).get("closed_until"))]
    found += [i.as_of_ms for i in state.levels or ()]
    found = [ms for ms in found if ms is not None]
    return max(found) if found else None


def window_lag_ms(state: ViewState) -> int | None:
    """How long after its end the last window was published (to the second: S3 times)."""
    end = parse_iso_ms(window_end(state))
    if end is None or state.window_published_ms is None:
        return None
    return state.window_published_ms - end


def lag_ms(state: ViewState, now_ms: int) -> int | None:
    """How far behind now the pipeline's counts are (event time)."""
    closed = closed_until_ms(state)
    return None if closed is None else now_ms - closed


def watermark_lag_ms(state: ViewState, now_ms: int) -> int | None:
    """How far behind the wall clock the pipeline's event-time watermark (its reader's)
    was when the status was written; against now when the status has no time. (Against
    now, a status rewritten every few seconds would add its own age.)"""
    status = state.status or {}
    watermark = parse_iso_ms(status.get("watermark"))
    measured = parse_iso_ms(status.get("status_time"))
    return None if watermark is None else (now_ms if measured is None else measured) - watermark


def _or_lag(ms: int | None) -> str:
    return DASH if ms is None else format_duration(ms)


def _errors_suffix(state: ViewState) -> str:
    return f" error={'; '.join(state.errors)}" if state.errors else ""


# --- the two displays -------------------------------------------------------------------


def status_line(state: ViewState, now_ms: int) -> str:
    """One line for logs and CI (--no-tty), e.g.
    2026-11-27T16:05:00Z players=123 top=a:17,b:9,c:4,… transitions=45 stream/s=31.2
    pipeline/s=31.0 lag=7s watermark_lag=6s dead_letters=3 ddb_writes=120 throttles=0"""
    if not is_published(state):
        return WAITING + _errors_suffix(state)
    levels = busiest_first(state.levels)
    top = ",".join(f"{item.level}:{item.players}" for item in levels[:TOP_LEVELS_IN_LINE])
    if len(levels) > TOP_LEVELS_IN_LINE:
        top += ",…"
    lag = lag_ms(state, now_ms)
    reasons = dead_letters(state.status)
    fields = [
        window_end(state) or DASH,
        f"players={_or_dash(total_players(state))}",
        f"top={top or DASH}",
        f"transitions={_or_dash(transitions_in_window(state))}",
        f"published_after={_or_duration(window_lag_ms(state))}",
        f"stream/s={_format_rate(stream_rate(state.status))}",
        f"pipeline/s={_format_rate(pipeline_rate(state.status))}",
        f"lag={_or_lag(lag)}",
        f"watermark_lag={_or_lag(watermark_lag_ms(state, now_ms))}",
        f"dead_letters={DASH if reasons is None else sum(reasons.values())}",
        f"ddb_writes={_or_dash(_status_count(state.status, 'dynamodb_writes'))}",
        # Every throttled (or dropped) request is retried, so retries count the throttles.
        f"throttles={_or_dash(_status_count(state.status, 'dynamodb_retries'))}",
    ]
    return " ".join(fields) + _errors_suffix(state)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _level_lines(levels: list[LevelItem], width: int, rows: int | None) -> list[str]:
    """One line per level: name, count, a bar scaled so the busiest fills the width."""
    if not levels:
        return ["  (no players)"]
    shown = levels if rows is None or len(levels) <= rows else levels[: max(1, rows - 1)]
    count_width = len(str(levels[0].players))
    name_width = min(max(len(item.level) for item in shown), max(8, width // 3))
    bar_width = max(1, width - 2 - name_width - 1 - count_width - 1)
    busiest = levels[0].players
    lines = []
    for item in shown:
        # Any level with players gets at least one block, so none looks empty.
        bar = BAR * max(1, round(item.players * bar_width / busiest))
        lines.append(f"  {_fit(item.level, name_width):<{name_width}} {item.players:>{count_width}} {bar}")
    if len(shown) < len(levels):
        lines.append(f"  … {len(levels) - len(shown)} more levels")
    return lines


def _transition_lines(state: ViewState, width: int) -> list[str]:
    if _transitions(state) is None:
        return [f"  {DASH}"]
    top = top_transitions(state)
    if not top:
        return ["  (no transitions in this window)"]
    count_width = len(str(top[0][1]))
    label_width = min(max(len(label) for label, _ in top), max(8, width - count_width - 3))
    return [f"  {_fit(label, label_width):<{label_width}} {count:>{count_width}}" for label, count in top]


def _pipeline_lines(state: ViewState, now_ms: int) -> list[str]:
    status = state.status
    lag = lag_ms(state, now_ms)
    reasons = dead_letters(status)
    if reasons is None:
        letters = DASH
    else:
        letters = str(sum(reasons.values()))
        if reasons:
            letters += " (" + ", ".join(f"{reason} {n}" for reason, n in reasons.items()) + ")"
    committed = DASH if state.committed_ms is None else iso_utc(state.committed_ms)
    run = status or {}
    behind = _status_count(status, "behind_latest_ms")
    return [
        f"events/s: stream {_format_rate(stream_rate(status))}, pipeline {_format_rate(pipeline_rate(status))}"
        f"   behind the stream {DASH if behind is None else format_duration(behind)}",
        f"lag {_or_lag(lag)} (counts as of {_or_dash(run.get('closed_until'))}, committed until {committed})",
        f"watermark lag {_or_lag(watermark_lag_ms(state, now_ms))} (the event time the reader has passed)",
        f"dead letters {letters}",
        f"dynamodb writes {_or_dash(_status_count(status, 'dynamodb_writes'))}"
        f"   throttles {_or_dash(_status_count(status, 'dynamodb_retries'))}"
        f"   rejected repeats {_or_dash(_status_count(status, 'dynamodb_rejected_repeats'))}"
        f"   s3 puts {_or_dash(_status_count(status, 's3_puts'))}",
        f"pipeline {_or_dash(run.get('state'))} on {_or_dash(run.get('engine'))} since "
        f"{_or_dash(run.get('run_started'))}   records read {_or_dash(_status_count(status, 'records_read'))}"
        f"   status of {_or_dash(run.get('status_time'))}",
    ]


def render_frame(
    state: ViewState, width: int, now_ms: int, height: int | None = None, dashboard_url: str | None = None
) -> str:
    """The whole screen as text, every line at most `width` long. With `height`, the
    level list is cut so the frame fits."""
    width = max(20, width)
    title = f"level analytics: live view   {iso_utc(now_ms - now_ms % 1000)}"
    header = [title + (f"   dashboard {dashboard_url}" if dashboard_url else ""), ""]
    errors = [f"error: {message}" for message in state.errors]
    if not is_published(state):
        return "\n".join(_fit(line, width) for line in [*header, WAITING, *errors]) + "\n"

    levels = busiest_first(state.levels)
    newest = max((i.as_of_ms for i in state.levels or () if i.as_of_ms is not None), default=None)
    as_of = "" if newest is None else f", as of {iso_utc(newest)}"
    interval = (state.transition_info or {}).get("update_interval_secs")
    window = f"window ending {window_end(state) or DASH}" + (
        f" ({interval} s)" if isinstance(interval, int) else ""
    )
    window_lag = window_lag_ms(state)
    if window_lag is not None:
        window += f", published {format_duration(window_lag)} after its end"
    before_levels = [*header, f"players per level{as_of}"]
    after_levels = [
        f"total players: {_or_dash(total_players(state))}",
        "",
        f"top transitions, {window}",
        *_transition_lines(state, width),
        "",
        *_pipeline_lines(state, now_ms),
        *errors,
    ]
    rows = None if height is None else max(1, height - 1 - len(before_levels) - len(after_levels))
    lines = before_levels + _level_lines(levels, width, rows) + after_levels
    return "\n".join(_fit(line, width) for line in lines) + "\n"


# --- readers (thin I/O) -----------------------------------------------------------------


def object_path(snapshot_path: str, name: str) -> str:
    if snapshot_path.startswith("s3://"):
        return f"{snapshot_path.rstrip('/')}/{name}"
    return os.path.join(snapshot_path, name)


def read_json_object(path: str, s3_client) -> dict | None:
    """A JSON object from a file or s3://bucket/key; None when it does not exist (yet).
    A missing bucket is an error, not "yet": the pipeline does not create buckets."""
    found = read_json_object_with_time(path, s3_client)
    return None if found is None else found[0]


def read_json_object_with_time(path: str, s3_client) -> tuple[dict, int] | None:
    """(the object, when it was last written in epoch ms), or None when it does not exist."""
    if path.startswith("s3://"):
        bucket, _, key = path[len("s3://") :].partition("/")
        try:
            response = s3_client.get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error_code(error) in ("NoSuchKey", "404"):
                return None
            raise
        body, modified_ms = response["Body"].read(), int(response["LastModified"].timestamp() * 1000)
    else:
        try:
            with open(path, "rb") as handle:
                body, modified_ms = handle.read(), int(os.fstat(handle.fileno()).st_mtime * 1000)
        except FileNotFoundError:
            return None
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value, modified_ms


_READ_ERRORS = (ClientError, BotoCoreError, OSError, ValueError)


def _one_line(error: Exception) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def read_state(
    dynamodb,
    s3,
    snapshot_path: str | None,
    level_table: str = LEVEL_TABLE,
    progress_table: str = PROGRESS_TABLE,
) -> ViewState:
    """Reads every source; a source that fails is None in the state and one error line."""
    errors = []

    def attempt(what: str, read):
        try:
            return read()
        except _READ_ERRORS as error:
            errors.append(f"{what}: {_one_line(error)}")
            return None

    levels = attempt(level_table, lambda: read_level_table(dynamodb, level_table))
    committed_ms = attempt(progress_table, lambda: read_committed_ms(dynamodb, progress_table))
    transition_info = status = published_ms = None
    if snapshot_path:
        transitions_path = object_path(snapshot_path, TRANSITIONS_LATEST)
        status_path = object_path(snapshot_path, STATUS_OBJECT)
        found = attempt(transitions_path, lambda: read_json_object_with_time(transitions_path, s3))
        transition_info, published_ms = found or (None, None)
        status = attempt(status_path, lambda: read_json_object(status_path, s3))
    return ViewState(levels, transition_info, status, committed_ms, tuple(errors), published_ms)


# --- command line -----------------------------------------------------------------------


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.apps.live_view",
        description="Live view of what the level analytics pipeline has published.",
    )
    parser.add_argument("--aws_region", default="us-east-1", help="Default: us-east-1.")
    parser.add_argument(
        "--aws_endpoint_url", default=None, help="e.g. moto on http://127.0.0.1:5000. Default: real AWS."
    )
    parser.add_argument(
        "--snapshot_path",
        default=None,
        help="The pipeline's --snapshot_path: a directory or s3://bucket/prefix. Default: none "
        "(no transitions, no pipeline status).",
    )
    parser.add_argument("--level_table", default=LEVEL_TABLE, help=f"Default: {LEVEL_TABLE}.")
    parser.add_argument(
        "--transitions_table",
        default=TRANSITIONS_TABLE,
        help="Accepted so the pipeline's flags can be reused; not read (the window's "
        "transitions come from the snapshot). Default: transitions.",
    )
    parser.add_argument("--progress_table", default=PROGRESS_TABLE, help=f"Default: {PROGRESS_TABLE}.")
    parser.add_argument("--refresh_secs", type=_positive, default=2.0, help="Default: 2.")
    parser.add_argument(
        "--dashboard_url",
        default=None,
        help="Shown in the header, where the web dashboard is. Default: none.",
    )
    parser.add_argument(
        "--no-tty",
        dest="no_tty",
        action="store_true",
        help="Plain mode: one status line per new window (and at start), for logs and CI.",
    )
    parser.add_argument("--once", action="store_true", help="Show once and exit.")
    parser.add_argument(
        "--duration_secs", type=_positive, default=None, help="Stop after this long. Default: until Ctrl-C."
    )
    parser.add_argument("--now_ms", type=int, default=None, help=argparse.SUPPRESS)  # tests: a fixed clock
    args = parser.parse_args(argv)
    try:
        args.clients = make_clients(args.aws_region, args.aws_endpoint_url, args.snapshot_path)
    except ValueError as error:  # e.g. an endpoint that is not a URL
        parser.error(str(error))
    return args


def make_clients(region: str, endpoint_url: str | None, snapshot_path: str | None):
    """(dynamodb, s3 or None). Short timeouts and few retries: the next refresh retries."""
    quick = {"connect_timeout": 2, "read_timeout": 5, "retries": {"mode": "standard", "max_attempts": 2}}
    dynamodb = ClientFactory("dynamodb", region, endpoint_url, **quick)()
    s3 = None
    if snapshot_path and snapshot_path.startswith("s3://"):
        s3 = ClientFactory("s3", region, endpoint_url, **quick)()
    return dynamodb, s3


def run(args: argparse.Namespace, out=sys.stdout) -> None:
    dynamodb, s3 = args.clients
    deadline = None if args.duration_secs is None else time.monotonic() + args.duration_secs
    last_key = None
    while True:
        started = time.monotonic()
        state = read_state(dynamodb, s3, args.snapshot_path, args.level_table, args.progress_table)
        now_ms = args.now_ms if args.now_ms is not None else int(time.time() * 1000)
        if args.no_tty:
            # A line per new window; also when the pipeline first appears or an error changes.
            key = (window_end(state), is_published(state), state.errors)
            if key != last_key:
                out.write(status_line(state, now_ms) + "\n")
                out.flush()
                last_key = key
        else:
            size = shutil.get_terminal_size()
            frame = render_frame(
                state, size.columns, now_ms, height=size.lines, dashboard_url=args.dashboard_url
            )
            out.write(frame if args.once else CLEAR_SCREEN + frame)
            out.flush()
        if args.once:
            return
        next_refresh = started + args.refresh_secs
        if deadline is not None and next_refresh >= deadline:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return
        time.sleep(max(0.0, next_refresh - time.monotonic()))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:  # Ctrl-C is the normal way to stop
        pass
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
