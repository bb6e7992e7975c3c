"""The web dashboard (pipeline.apps.dashboard): its pure computations, the live state
kept by its pollers (in-process, on a directory), and `python -m pipeline.apps.dashboard`
as a subprocess serving JSON and Server-Sent Events from objects and a table in moto's
real HTTP server. The page itself, in a real browser: tests/test_dashboard_browser.py."""

import asyncio
import contextlib
import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from pipeline.apps.dashboard import model
from pipeline.apps.dashboard.model import (
    OUTSIDE,
    Transition,
    counts_of,
    level_order,
    level_rows,
    live_levels,
    parse_window_end,
    sankey,
    series,
    staleness,
    status_rows,
    stuck_table,
    top_transitions,
    transitions_of,
    window_view,
)
from pipeline.apps.dashboard.server import Dashboard, Settings, short_error
from pipeline.apps.dashboard.sources import DirStore, History
from pipeline.apps.published import LevelItem
from pipeline.rules.catalogue import campaign_levels
from pipeline.rules.times import iso_utc
from pipeline.testing.aws_server import REGION, free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTILE = "<img src=x onerror=alert(1)>"
CATALOGUE = campaign_levels()
A, B, C, D = CATALOGUE[:4]  # dungeons-of-kithgard, gems-in-the-deep, shadow-guard, kounter-kithwise
WINDOW_MS = 60_000
FIRST_END_MS = 1_796_198_400_000  # 2026-12-02T08:00:00Z
WINDOWS = 20
START_TIMEOUT_SECS = 30

# --- the fixture: WINDOWS windows of 60 s, the same transitions in each ----------------

TRANSITIONS = [
    {"from": None, "to": A, "count": 6},
    {"from": A, "to": B, "count": 4},
    {"from": B, "to": C, "count": 5},
    {"from": C, "to": None, "count": 6},
    {"from": C, "to": B, "count": 2},
    {"from": C, "to": D, "count": 2},
    {"from": D, "to": C, "count": 1},
    {"from": HOSTILE, "to": None, "count": 1},
    {"from": None, "to": HOSTILE, "count": 2},
]
# Per window: out of A 4 (forward 4); B 5 (forward 5); C 10 (exits 6, back 2, forward 2);
# D 1 (back 1); HOSTILE 1 (exit 1; not in the catalogue, so last in campaign order).


def window_end_ms(k: int) -> int:
    return FIRST_END_MS + k * WINDOW_MS


def window_counts(k: int) -> dict[str, int]:
    return {A: 5 + k % 3, B: 12, C: 30 + k, D: 4, HOSTILE: 3}


LATEST_END = iso_utc(window_end_ms(WINDOWS - 1))  # 2026-12-02T08:19:00Z
LATEST_COUNTS = window_counts(WINDOWS - 1)  # C: 49
# The level table, 5 s after the latest window's end: fresher than the window, so shown.
TABLE_AS_OF_MS = window_end_ms(WINDOWS - 1) + 5_000
TABLE_COUNTS = {A: 6, B: 11, C: 50, D: 4, HOSTILE: 3, "true-names": 0}
# The window published during the tests.
NEW_COUNTS = {A: 9, B: 12, C: 77, D: 4, HOSTILE: 3}
NEW_TRANSITIONS = [*TRANSITIONS, {"from": B, "to": D, "count": 11}]


def window_objects(end_ms: int, counts: dict, transitions: list, interval_secs: int = 60) -> list:
    """The pipeline's four objects of a window, in its write order (levels object last)."""
    start_ms = end_ms - interval_secs * 1000
    header = {
        "update_time": iso_utc(end_ms),
        "update_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"window/{start_ms}/{end_ms}")),
        "update_interval_secs": interval_secs,
    }
    history = {**header, "window_start": iso_utc(start_ms), "window_end": iso_utc(end_ms)}
    positive = {level: n for level, n in counts.items() if n > 0}
    return [
        (f"history/levels/{iso_utc(end_ms)}.json", {**history, "level_player_counts": positive}),
        (f"history/transitions/{iso_utc(end_ms)}.json", {**history, "transitions": transitions}),
        ("transition_information.json", {**header, "transitions": transitions}),
        ("level_information.json", {**header, "level_player_counts": positive}),
    ]


def publish(put, end_ms: int, counts: dict, transitions: list, interval_secs: int = 60) -> None:
    for name, body in window_objects(end_ms, counts, transitions, interval_secs):
        put(name, json.dumps(body, ensure_ascii=False).encode("utf-8"))


STATUS = {
    "run_started": "2026-12-02T08:00:00Z",
    "records_read": 1234,
    "dead_letters": {"late": 2, "unparseable": 1},
    "dynamodb_writes": 88,
}


def publish_fixture(put) -> None:
    for k in range(WINDOWS):
        publish(put, window_end_ms(k), window_counts(k), TRANSITIONS)
    put("pipeline_status.json", json.dumps(STATUS).encode())


def dir_put(root: str):
    def put(name: str, body: bytes) -> None:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(body)

    return put


class S3Fixture:
    """A bucket with the fixture's objects and a level table, names unique to one test module."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        suffix = uuid.uuid4().hex[:8]
        self.bucket = f"dashboard-test-{suffix}"
        self.prefix = "snaps"
        self.table = f"dashboard-level-state-{suffix}"
        self.s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
        self.dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
        self.s3.create_bucket(Bucket=self.bucket)
        self.dynamodb.create_table(
            TableName=self.table,
            KeySchema=[{"AttributeName": "levelId", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "levelId", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        publish_fixture(self.put)
        self.set_table(TABLE_COUNTS, TABLE_AS_OF_MS)

    @property
    def snapshot_path(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def put(self, name: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}", Body=body)

    def set_table(self, counts: dict, as_of_ms: int) -> None:
        for level, n in counts.items():
            self.dynamodb.put_item(
                TableName=self.table,
                Item={
                    "levelId": {"S": level},
                    "playerCount": {"N": str(n)},
                    "asOf": {"N": str(as_of_ms)},
                    "updatedAt": {"S": iso_utc(as_of_ms)},
                },
            )

    def flags(self) -> list[str]:
        return [
            "--snapshot_path",
            self.snapshot_path,
            "--aws_endpoint_url",
            self.endpoint,
            "--level_table",
            self.table,
        ]


# --- running the dashboard as a user would ----------------------------------------------


@contextlib.contextmanager
def running_dashboard(*flags: str):
    """`python -m pipeline.apps.dashboard FLAGS --port P`; yields its printed URL. Stops it
    with SIGINT at the end and checks it exits 0."""
    port = free_port()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.apps.dashboard", *flags, "--port", str(port)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
        try:
            try:
                line = lines.get(timeout=START_TIMEOUT_SECS)
            except queue.Empty:
                line = ""
            if not line.startswith("dashboard: http://"):
                stderr.seek(0)
                raise AssertionError(f"no URL printed: {line!r}; stderr: {stderr.read().decode()[-3000:]}")
            url = line.split(" ", 1)[1].strip()
            assert url == f"http://127.0.0.1:{port}"
            yield url
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
            stderr.seek(0)
            assert code == 0, stderr.read().decode()[-3000:]


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(url: str):
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


class EventStream:
    """A Server-Sent Events client: events() yields (event, data) as they arrive."""

    def __init__(self, url: str, timeout: float = 10.0):
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self.connection.request("GET", "/events", headers={"Accept": "text/event-stream"})
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type").startswith("text/event-stream")
        self.raw: list[bytes] = []

    def events(self):
        event, data = None, []
        while True:
            line = self.response.fp.readline()
            if not line:
                return
            self.raw.append(line)
            line = line.decode("utf-8").rstrip("\n")
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
            elif not line:
                if event is not None:
                    yield event, json.loads("\n".join(data))
                event, data = None, []

    def close(self):
        self.connection.close()


# --- pure functions ---------------------------------------------------------------------


def test_campaign_levels_are_the_package_data_file():
    with open(os.path.join(REPO, "pipeline", "rules", "data", "levels.json"), encoding="utf-8") as handle:
        assert campaign_levels() == json.load(handle)["levels"]


def test_level_order_is_the_catalogue_then_other_levels_by_name():
    assert level_order(["c", "a", "b"], ["z", "a", "y", HOSTILE, "y"]) == ["c", "a", "b", HOSTILE, "y", "z"]


def test_level_rows_show_every_catalogue_level_and_other_levels_with_players():
    rows = level_rows({"b": 3, "x": 2, "gone": 0, HOSTILE: 1}, ["a", "b"])
    assert rows == [
        {"level": "a", "players": 0},
        {"level": "b", "players": 3},
        {"level": HOSTILE, "players": 1},
        {"level": "x", "players": 2},
    ]


def test_malformed_entries_are_dropped():
    assert counts_of({"level_player_counts": {"a": 2, "b": True, "c": "3", "d": -1, "e": 0}}) == {"a": 2}
    assert counts_of({"level_player_counts": []}) == {}
    entries = [
        {"from": "a", "to": "b", "count": 2},
        {"from": "a", "to": "a", "count": 1},  # never from == to
        {"from": None, "to": None, "count": 1},
        {"from": "a", "to": 3, "count": 1},
        {"from": "a", "to": None, "count": False},
        {"from": "a", "to": None, "count": 0},
        "junk",
    ]
    assert transitions_of({"transitions": entries}) == [Transition("a", "b", 2)]
    assert transitions_of({"transitions": "x"}) == []


def test_sankey_has_where_players_came_from_on_the_left_and_where_they_went_on_the_right():
    transitions = [
        Transition("b", "a", 2),
        Transition("a", "b", 3),
        Transition(None, "a", 5),
        Transition("b", None, 1),
        Transition(HOSTILE, None, 4),
        Transition("a", "b", 1),  # the same pair again: one link
    ]
    result = sankey(transitions, ["a", "b"])
    labels = [(node["side"], node["label"]) for node in result["nodes"]]
    assert labels == [
        ("from", OUTSIDE),
        ("from", "a"),
        ("from", "b"),
        ("from", HOSTILE),
        ("to", "a"),
        ("to", "b"),
        ("to", OUTSIDE),
    ]
    assert [node["outside"] for node in result["nodes"]] == [True, False, False, False, False, False, True]
    links = {
        (result["nodes"][link["source"]]["label"], result["nodes"][link["target"]]["label"]): link["count"]
        for link in result["links"]
    }
    assert links == {
        (OUTSIDE, "a"): 5,
        ("a", "b"): 4,
        ("b", "a"): 2,
        ("b", OUTSIDE): 1,
        (HOSTILE, OUTSIDE): 4,
    }
    # Acyclic: every link goes from the left column to the right one, none to itself.
    left = sum(1 for node in result["nodes"] if node["side"] == "from")
    assert all(link["source"] < left <= link["target"] for link in result["links"])
    assert sankey([], ["a"]) == {"nodes": [], "links": []}


def test_top_transitions_most_frequent_first_then_by_name():
    transitions = [
        Transition("b", None, 3),
        Transition(None, "a", 3),
        Transition("a", "b", 7),
        Transition("c", "a", 1),
    ]
    assert top_transitions(transitions, limit=3) == [
        {"from": "a", "to": "b", "count": 7},
        {"from": None, "to": "a", "count": 3},
        {"from": "b", "to": None, "count": 3},
    ]


def test_stuck_table_counts_exits_moves_back_and_forward_and_their_shares():
    window = transitions_of({"transitions": TRANSITIONS})
    rows = stuck_table([window, window, window], CATALOGUE)
    assert rows == [
        {
            "level": HOSTILE,
            "out": 3,
            "exits": 3,
            "back": 0,
            "forward": 0,
            "exit_share": 1.0,
            "back_share": 0.0,
        },
        {"level": C, "out": 30, "exits": 18, "back": 6, "forward": 6, "exit_share": 0.6, "back_share": 0.2},
        {"level": A, "out": 12, "exits": 0, "back": 0, "forward": 12, "exit_share": 0.0, "back_share": 0.0},
        {"level": B, "out": 15, "exits": 0, "back": 0, "forward": 15, "exit_share": 0.0, "back_share": 0.0},
        {"level": D, "out": 3, "exits": 0, "back": 3, "forward": 0, "exit_share": 0.0, "back_share": 1.0},
    ]


def test_stuck_table_puts_levels_outside_the_catalogue_after_it():
    rows = stuck_table([[Transition("zz-unknown", A, 2), Transition(A, "zz-unknown", 1)]], CATALOGUE)
    by_level = {row["level"]: row for row in rows}
    assert by_level["zz-unknown"]["back"] == 2  # to a catalogue level: back
    assert by_level[A]["forward"] == 1
    assert stuck_table([], CATALOGUE) == []


def test_series_has_totals_and_a_series_per_level_oldest_window_first():
    windows = [
        ("2026-12-02T08:02:00Z", {"b": 1, HOSTILE: 2}),
        ("2026-12-02T08:01:00Z", {"a": 4}),
    ]
    assert series(windows, ["a", "b", "c"]) == {
        "windows": ["2026-12-02T08:01:00Z", "2026-12-02T08:02:00Z"],
        "total": [4, 3],
        "levels": {"a": [4, 0], "b": [0, 1], HOSTILE: [0, 2]},
        "order": ["a", "b", HOSTILE],
    }


def test_staleness_waits_then_is_live_until_two_windows_of_wall_clock_pass():
    assert staleness(None, 60, 1_000)["state"] == "waiting"
    published = 1_000_000
    assert staleness(published, 60, published + 120_000) == {
        "state": "live",
        "age_secs": 120,
        "limit_secs": 120,
    }
    assert staleness(published, 60, published + 120_001)["state"] == "stale"
    assert staleness(published, 10, published + 21_000)["state"] == "stale"
    assert staleness(published, "junk", published + 100_000)["state"] == "live"  # 60 s assumed
    assert staleness(published, 60, published - 5_000)["age_secs"] == 0  # a clock behind the store


def test_live_levels_take_the_table_when_it_is_at_least_as_new_as_the_window():
    window = {"update_time": "2026-12-02T08:01:00Z", "level_player_counts": {"a": 1}}
    end_ms = parse_window_end("2026-12-02T08:01:00Z")
    newer = [
        LevelItem("a", 2, end_ms + 5_000),
        LevelItem("b", 0, end_ms + 5_000),
        LevelItem(HOSTILE, 7, end_ms),
    ]
    live = live_levels(newer, window, ["a", "b"])
    assert live["source"] == "table" and live["as_of"] == "2026-12-02T08:01:05Z"
    assert live["levels"] == [
        {"level": "a", "players": 2},
        {"level": "b", "players": 0},
        {"level": HOSTILE, "players": 7},
    ]
    assert live["total_players"] == 9
    older = [LevelItem("a", 9, end_ms - 1)]
    assert live_levels(older, window, ["a"])["source"] == "window"
    assert live_levels(older, window, ["a"])["levels"] == [{"level": "a", "players": 1}]
    assert live_levels(None, window, ["a"])["as_of"] == "2026-12-02T08:01:00Z"
    assert live_levels(older, None, ["a"])["source"] == "table"
    assert live_levels([], None, ["a"]) is None


def test_status_rows_show_any_keys_flattened_without_secrets_or_urls():
    status = {
        "records_read": 12,
        "dead_letters": {"late": 2, "unparseable": 1},
        "new_figure": [1, 2],
        "nothing": None,
        "aws_secret_access_key": "x",
        "endpoint_url": "y",
        "target": "http://127.0.0.1:5000",
    }
    assert status_rows(status) == [
        ["dead_letters.late", "2"],
        ["dead_letters.unparseable", "1"],
        ["new_figure", "1, 2"],
        ["nothing", "—"],
        ["records_read", "12"],
    ]
    assert status_rows(None) is None and status_rows([1]) is None


def test_window_ends_parse_only_in_the_pipelines_format():
    assert parse_window_end("2026-12-02T10:01:00Z") == 1_796_205_660_000
    assert iso_utc(1_796_205_660_000) == "2026-12-02T10:01:00Z"
    assert parse_window_end(iso_utc(1_796_205_660_500)) == 1_796_205_660_500
    for bad in (
        "../../etc/passwd",
        "2026-12-02 10:01:00",
        "2026-12-02T10:01:00",
        "2026-13-02T10:01:00Z",
        None,
        5,
    ):
        assert parse_window_end(bad) is None


def test_hostile_slugs_survive_as_data_through_json():
    levels = {"update_time": "2026-12-02T08:01:00Z", "level_player_counts": {HOSTILE: 3, "a&amp;b": 1}}
    view = window_view(levels, [Transition(HOSTILE, "a&amp;b", 2)], ["a"])
    back = json.loads(json.dumps(view))
    assert {row["level"] for row in back["levels"]} >= {HOSTILE, "a&amp;b"}
    assert {node["label"] for node in back["transitions"]["sankey"]["nodes"]} == {HOSTILE, "a&amp;b"}
    assert back["transitions"]["top"] == [{"from": HOSTILE, "to": "a&amp;b", "count": 2}]


def test_a_read_error_reaches_the_browser_as_its_code_only():
    error = ClientError(
        {"Error": {"Code": "NoSuchBucket", "Message": "at http://127.0.0.1:5000/b"}}, "GetObject"
    )
    assert short_error(error) == "NoSuchBucket"
    assert short_error(OSError("http://127.0.0.1:5000 refused")) == "OSError"


# --- the live state and the history cache, in-process on a directory --------------------


class CountingStore(DirStore):
    def __init__(self, root):
        super().__init__(root)
        self.gets: list[str] = []

    def get(self, name, etag=None):
        self.gets.append(name)
        return super().get(name, etag)


class BrokenTable:
    """A DynamoDB client whose scans fail with a message that names the endpoint."""

    def get_paginator(self, _name):
        raise ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": "denied at http://127.0.0.1:4566"}}, "Scan"
        )


def test_the_live_state_follows_new_windows_and_reads_each_history_object_once(tmp_path):
    root = str(tmp_path)
    publish_fixture(dir_put(root))
    store = CountingStore(root)

    async def scenario():
        dashboard = Dashboard(Settings(snapshot_path=root), store, BrokenTable(), CATALOGUE)
        try:
            await dashboard.poll_window_once()
            assert not await dashboard.poll_table_once()  # the table failed
            current = dashboard.current()
            assert current["window"]["update_time"] == LATEST_END
            assert current["live"]["source"] == "window"
            assert {
                r["level"]: r["players"] for r in current["live"]["levels"] if r["players"]
            } == LATEST_COUNTS
            assert current["errors"] == ["level table: AccessDeniedException"]
            assert ["records_read", "1234"] in current["status"]
            assert current["staleness"]["state"] == "live"

            version = dashboard.version
            await dashboard.poll_window_once()  # nothing new: a conditional read, no change
            assert dashboard.version == version

            first = dashboard.history_view("15m")
            assert len(first["windows"]) == 15 and first["windows"][-1] == LATEST_END
            assert first["stuck"][1] == {
                "level": C,
                "out": 150,
                "exits": 90,
                "back": 30,
                "forward": 30,
                "exit_share": 0.6,
                "back_share": 0.2,
            }
            assert first["series"]["total"] == [sum(window_counts(k).values()) for k in range(WINDOWS)]
            dashboard.history_view("1h")
            reads = len(store.gets)
            dashboard.history_view("15m")
            dashboard.history_view("1h")
            assert len(store.gets) == reads  # immutable: read once, kept

            publish(dir_put(root), window_end_ms(WINDOWS), NEW_COUNTS, NEW_TRANSITIONS)
            await dashboard.poll_window_once()
            assert dashboard.version > version
            assert dashboard.current()["window"]["update_time"] == iso_utc(window_end_ms(WINDOWS))
            after = dashboard.history_view("1h")
            assert after["windows"][-1] == iso_utc(window_end_ms(WINDOWS))
            new_reads = [name for name in store.gets[reads:] if name.startswith("history/")]
            assert sorted(new_reads) == sorted(
                f"history/{kind}/{iso_utc(window_end_ms(WINDOWS))}.json" for kind in ("levels", "transitions")
            )
        finally:
            await dashboard.cleanup()

    asyncio.run(scenario())


def test_history_lists_older_windows_only_when_a_longer_span_asks_for_them(tmp_path):
    root = str(tmp_path)
    publish_fixture(dir_put(root))
    history = History(DirStore(root))
    try:
        latest = window_end_ms(WINDOWS - 1)
        assert history.window_ends(latest - 5 * WINDOW_MS) == [
            iso_utc(window_end_ms(k)) for k in range(15, 20)
        ]
        assert history.window_ends(latest - 100 * WINDOW_MS) == [iso_utc(window_end_ms(k)) for k in range(20)]
        assert history.levels("2020-01-01T00:00:00Z") is None
        history.many_levels([iso_utc(window_end_ms(k)) for k in range(20)])
        history.forget_before(window_end_ms(9))  # what no span reaches any more is dropped
        assert sorted(history._levels) == [iso_utc(window_end_ms(k)) for k in range(10, 20)]
        assert history.window_ends(latest - 15 * WINDOW_MS) == [
            iso_utc(window_end_ms(k)) for k in range(5, 20)
        ]
    finally:
        history.close()


def test_a_window_published_long_ago_shows_as_stale(tmp_path):
    root = str(tmp_path)
    publish_fixture(dir_put(root))
    long_ago = time.time() - 3600
    os.utime(os.path.join(root, "level_information.json"), (long_ago, long_ago))

    async def scenario():
        dashboard = Dashboard(Settings(snapshot_path=root, level_table=""), DirStore(root), None, CATALOGUE)
        try:
            await dashboard.poll_window_once()
            assert await dashboard.poll_table_once()  # no table to read
            stale = dashboard.current()["staleness"]
            assert stale["state"] == "stale" and stale["age_secs"] >= 3600 and stale["limit_secs"] == 120
        finally:
            await dashboard.cleanup()

    asyncio.run(scenario())


# --- the server, against moto's real HTTP server -----------------------------------------


@pytest.fixture(scope="module")
def s3_fixture(moto_endpoint):
    return S3Fixture(moto_endpoint)


@pytest.fixture(scope="module")
def dashboard_url(s3_fixture):
    with running_dashboard(*s3_fixture.flags()) as url:
        yield url


def test_current_shows_the_latest_window_the_table_and_the_status(dashboard_url):
    current = get_json(dashboard_url + "/api/current")
    assert current["published"] is True
    window = current["window"]
    assert window["update_time"] == LATEST_END and window["update_interval_secs"] == 60
    assert {r["level"]: r["players"] for r in window["levels"] if r["players"]} == LATEST_COUNTS
    assert [r["level"] for r in window["levels"]][: len(CATALOGUE)] == CATALOGUE
    assert window["levels"][-1] == {"level": HOSTILE, "players": 3}
    assert window["transitions"]["total"] == sum(t["count"] for t in TRANSITIONS)
    assert window["transitions"]["top"][0] == {"from": None, "to": A, "count": 6}
    live = current["live"]
    assert live["source"] == "table" and live["as_of"] == iso_utc(TABLE_AS_OF_MS)
    assert {r["level"]: r["players"] for r in live["levels"] if r["players"]} == {
        level: n for level, n in TABLE_COUNTS.items() if n
    }
    assert ["dead_letters.late", "2"] in current["status"]
    assert current["staleness"]["state"] == "live"
    assert current["errors"] == []


def test_history_gives_the_stuck_table_windows_and_the_last_hours_series(dashboard_url):
    history = get_json(dashboard_url + "/api/history?span=15m")
    assert history["windows"] == [iso_utc(window_end_ms(k)) for k in range(WINDOWS - 15, WINDOWS)]
    assert history["stuck_windows"] == 15
    assert [row["level"] for row in history["stuck"]] == [HOSTILE, C, A, B, D]
    assert history["stuck"][0]["exits"] == 15 and history["stuck"][1]["back"] == 30
    assert history["series"]["windows"][0] == iso_utc(window_end_ms(0))  # an hour: all 20 windows
    assert history["series"]["levels"][C] == [30 + k for k in range(WINDOWS)]
    assert get(dashboard_url + "/api/history?span=1w")[0] == 400


def test_window_gives_one_past_window(dashboard_url):
    end = iso_utc(window_end_ms(3))
    view = get_json(f"{dashboard_url}/api/window/{end}")
    assert view["window_end"] == end and view["window_start"] == iso_utc(window_end_ms(2))
    assert {r["level"]: r["players"] for r in view["levels"] if r["players"]} == window_counts(3)
    assert view["transitions"]["top"][0]["count"] == 6
    assert get(f"{dashboard_url}/api/window/2020-01-01T00:00:00Z")[0] == 404
    assert get(f"{dashboard_url}/api/window/..%2F..%2Fpipeline_status.json")[0] in (400, 404)


def test_the_page_and_its_assets_are_served_with_no_outside_reference(dashboard_url):
    status, headers, page = get(dashboard_url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    text = page.decode()
    assert "/static/plotly.min.js" in text and "/static/app.js" in text and "/static/style.css" in text
    assert "http://" not in text and "https://" not in text
    status, headers, plotly = get(dashboard_url + "/static/plotly.min.js", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip" and len(plotly) > 100_000
    assert get(dashboard_url + "/static/nothing.js")[0] == 404
    status, _, script = get(dashboard_url + "/static/app.js")
    assert status == 200 and b"innerHTML" not in script and b"insertAdjacentHTML" not in script


def test_it_is_read_only_and_answers_only_to_loopback_host_names(dashboard_url):
    request = urllib.request.Request(dashboard_url + "/api/current", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    port = dashboard_url.rsplit(":", 1)[1]
    assert get(dashboard_url + "/api/current", {"Host": f"attacker.example:{port}"})[0] == 421
    assert get(dashboard_url + "/api/current", {"Host": f"localhost:{port}"})[0] == 200


def test_events_push_a_new_window_within_a_second_and_nothing_secret_reaches_the_browser(
    dashboard_url, s3_fixture
):
    stream = EventStream(dashboard_url)
    try:
        events = stream.events()
        event, first = next(events)
        assert event == "current" and first["window"]["update_time"] == LATEST_END
        event, heartbeat = next(events)
        assert event == "status" and heartbeat["state"] == "live"

        new_end = window_end_ms(WINDOWS)
        publish(s3_fixture.put, new_end, NEW_COUNTS, NEW_TRANSITIONS)
        published = time.monotonic()
        for event, data in events:
            if event == "current" and data["window"]["update_time"] == iso_utc(new_end):
                latency = time.monotonic() - published
                break
            assert time.monotonic() - published < 10, "no event for the new window"
        print(f"new window pushed {latency:.3f} s after its levels object was written")
        assert latency < 1.0
        # The new window is newer than the table: the level map now shows the window.
        assert data["live"]["source"] == "window"
        assert {r["level"]: r["players"] for r in data["live"]["levels"] if r["players"]} == NEW_COUNTS
        assert data["window"]["transitions"]["top"][0] == {"from": B, "to": D, "count": 11}
    finally:
        stream.close()

    # Everything the browser can get: no endpoint, credential, bucket or table name.
    bodies = [b"".join(stream.raw)]
    for path in ("/", "/static/app.js", "/static/style.css", "/api/current", "/api/history?span=1d"):
        bodies.append(get(dashboard_url + path)[2])
    bodies.append(get(f"{dashboard_url}/api/window/{LATEST_END}")[2])
    everything = b"\n".join(bodies).decode("utf-8")
    moto_port = s3_fixture.endpoint.rsplit(":", 1)[1]
    for secret in (
        s3_fixture.endpoint,
        f":{moto_port}",
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
        s3_fixture.bucket,
        s3_fixture.table,
    ):
        assert secret not in everything


def test_read_errors_show_as_codes_and_the_help_warns_about_other_hosts(moto_endpoint):
    missing = f"s3://dashboard-missing-{uuid.uuid4().hex[:8]}/snaps"
    with running_dashboard(
        "--snapshot_path", missing, "--aws_endpoint_url", moto_endpoint, "--level_table", "no-such-table"
    ) as url:
        current = get_json(url + "/api/current")
    assert current["published"] is False and current["live"] is None
    assert current["errors"] == [
        "snapshots: NoSuchBucket",
        "status: NoSuchBucket",
    ]  # a missing table: none yet
    assert current["staleness"]["state"] == "waiting"
    assert moto_endpoint not in json.dumps(current)

    help_text = subprocess.run(
        [sys.executable, "-m", "pipeline.apps.dashboard", "--help"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert "anyone who can reach the port" in " ".join(help_text.split())
    assert model.SPANS == {"15m": 900, "1h": 3600, "1d": 86400}
