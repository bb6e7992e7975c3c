"""The whole system on one machine, no AWS account: `make run`.

    python -m pipeline.apps.run_local [--players 200] [--event_gap_secs 4] [--timeout_secs 60] ...

1. moto in server mode on a free loopback port: the embedded AWS (its Kinesis made to keep
   up with a long stream, pipeline.testing.chaos.fast_kinesis_for_moto);
2. a Kinesis stream (--shards), the level, transitions and progress tables, a bucket;
3. the simulator, sending live players' events to the stream (pipeline.apps.simulator --live);
4. the pipeline (pipeline.main, streaming from the stream, writing DynamoDB and S3): one
   pipeline that runs until stopped, on Prism (or on an embedded Flink with
   `--runner FlinkRunner`, make run-flink);
5. the dashboard (pipeline.apps.dashboard), whose URL is printed;
6. the live view (pipeline.apps.live_view) of what the pipeline published, in the foreground.

Ctrl-C stops everything (children run in their own process groups, so only this process
gets the terminal's SIGINT and stops them in order), then prints a one-line summary. Logs
of the children go to --workdir.
"""

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from pipeline.aws import ClientFactory
from pipeline.rules.snapshot_format import STATUS_OBJECT, figures_line
from pipeline.rules.tables import LEVEL_TABLE, PROGRESS_TABLE, TRANSITIONS_TABLE
from pipeline.testing.aws_server import DUMMY_CREDENTIALS, free_port, is_free

REGION = "us-east-1"
STREAM = "enriched-good"
BUCKET = "level-analytics"
TABLES = (LEVEL_TABLE, TRANSITIONS_TABLE, PROGRESS_TABLE)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Run the whole system locally on an embedded AWS (moto).")
    parser.add_argument("--players", type=int, default=200, help="simulated players (default 200)")
    parser.add_argument(
        "--event_gap_secs", type=float, default=4.0, help="mean seconds between a player's events (default 4)"
    )
    parser.add_argument("--minutes", type=float, default=60, help="how long the simulator plays (default 60)")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    parser.add_argument("--shards", type=int, default=2, help="Kinesis shards (default 2)")
    parser.add_argument("--timeout_secs", type=int, default=60, help="player timeout (default 60 here)")
    parser.add_argument("--window_secs", type=int, default=10, help="snapshot window (default 10 here)")
    parser.add_argument(
        "--update_secs",
        type=int,
        default=1,
        help="DynamoDB update grid and status refresh (default 1 here: counts are final once the "
        "watermark passes the next update instant, so a finer grid shows them sooner)",
    )
    parser.add_argument("--max_out_of_orderness_secs", type=int, default=5, help="(default 5 here)")
    parser.add_argument("--no-tty", dest="no_tty", action="store_true", help="plain status lines, for logs")
    parser.add_argument(
        "--stop_when_idle_secs",
        type=int,
        default=None,
        help="once the simulator is done, finish the pipeline (everyone times out) and exit (tests)",
    )
    aws = parser.add_mutually_exclusive_group()
    aws.add_argument(
        "--aws_endpoint_url",
        default=None,
        help="use this AWS endpoint (e.g. a moto or LocalStack already running) instead of starting moto",
    )
    aws.add_argument(
        "--real_aws",
        action="store_true",
        help="use real AWS (credentials from boto3's usual chain, --aws_region); creates what is missing",
    )
    parser.add_argument("--aws_region", default=REGION, help=f"(default {REGION})")
    parser.add_argument("--stream_name", default=STREAM, help=f"(default {STREAM})")
    parser.add_argument(
        "--table_prefix",
        default="",
        help="put before the three table names, to keep runs apart (default none)",
    )
    parser.add_argument("--bucket", default=BUCKET, help=f"for snapshots and dead letters (default {BUCKET})")
    parser.add_argument(
        "--workdir", default="out/local", help="logs and the simulator's truth (default out/local)"
    )
    parser.add_argument(
        "--dashboard_port",
        type=int,
        default=8050,
        help="the dashboard's port, 0 for any free one (default 8050)",
    )
    args, pipeline_flags = parser.parse_known_args(argv)
    # The rest goes to pipeline.main as it is (e.g. --runner FlinkRunner --flink_master [local]).
    args.pipeline_flags = pipeline_flags
    for name in (
        "players",
        "minutes",
        "shards",
        "timeout_secs",
        "window_secs",
        "update_secs",
        "event_gap_secs",
    ):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    if args.window_secs % args.update_secs:
        parser.error(f"--update_secs {args.update_secs} must divide --window_secs {args.window_secs}")
    return args


class LocalSystem:
    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.endpoint = args.aws_endpoint_url  # None: real AWS
        self.children = {}  # name -> Popen
        self.stopping = threading.Event()
        self.status = {}  # the pipeline's last pipeline_status.json
        self.failure = None

    # --- processes ---------------------------------------------------------------

    def start(self, name, command, log=True, **kwargs):
        output = open(os.path.join(self.args.workdir, f"{name}.log"), "ab") if log else None  # noqa: SIM115
        process = subprocess.Popen(
            command, env=self.env, stdout=output, stderr=output, start_new_session=True, **kwargs
        )
        self.children[name] = process
        return process

    def stop(self, name, grace_secs=10.0):
        process = self.children.get(name)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=grace_secs)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    # --- the pieces --------------------------------------------------------------

    def start_embedded_aws(self):
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        # moto's own server, with its Kinesis made to keep up with a stream that runs for
        # hours (pipeline.testing.chaos.fast_kinesis_for_moto: the same answers; without it
        # each GetRecords scans its shard from the first record, and races PutRecord).
        serve = f"from pipeline.testing.chaos import serve_moto; serve_moto({port})"
        self.start("moto", [sys.executable, "-c", serve])
        kinesis = self.client("kinesis")
        deadline = time.monotonic() + 30
        while True:
            try:
                kinesis.list_streams()
                return
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline or self.children["moto"].poll() is not None:
                    raise RuntimeError(f"moto did not start; see {self.args.workdir}/moto.log") from None
                time.sleep(0.2)

    def client(self, service):
        return ClientFactory(service, self.args.aws_region, self.endpoint)()

    def create_resources(self):
        """The stream, the tables and the bucket, each only if missing."""
        from pipeline.sinks.dynamodb import create_tables, default_client  # imports Beam: only now

        a = self.args
        kinesis = self.client("kinesis")
        try:
            kinesis.create_stream(StreamName=a.stream_name, ShardCount=a.shards)
        except kinesis.exceptions.ResourceInUseException:
            pass  # there already
        kinesis.get_waiter("stream_exists").wait(StreamName=a.stream_name, WaiterConfig={"Delay": 1})
        create_tables(default_client(a.aws_region, self.endpoint), *self.tables())
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=a.bucket)
        except s3.exceptions.ClientError:
            where = {} if a.aws_region == "us-east-1" else {"LocationConstraint": a.aws_region}
            s3.create_bucket(Bucket=a.bucket, **({"CreateBucketConfiguration": where} if where else {}))

    def start_simulator(self):
        a = self.args
        self.start(
            "simulator",
            [
                sys.executable, "-m", "pipeline.apps.simulator", "--live",
                f"--stream_name={a.stream_name}", *self.aws_flags(),
                f"--players={a.players}", f"--minutes={a.minutes}", f"--seed={a.seed}",
                f"--event_gap_secs={a.event_gap_secs}", f"--timeout_secs={a.timeout_secs}",
                f"--max_out_of_orderness_secs={a.max_out_of_orderness_secs}",
                f"--truth={os.path.join(a.workdir, 'truth.jsonl')}",
            ],
        )  # fmt: skip

    def tables(self):
        return [self.args.table_prefix + name for name in TABLES]

    def table_flags(self):
        levels, transitions, progress = self.tables()
        return [
            f"--level_table={levels}",
            f"--transitions_table={transitions}",
            f"--progress_table={progress}",
        ]

    def aws_flags(self):
        endpoint = [] if self.endpoint is None else [f"--aws_endpoint_url={self.endpoint}"]
        return [*endpoint, f"--aws_region={self.args.aws_region}"]

    def pipeline_command(self, *stop_flags):
        a = self.args
        return [
            sys.executable, "-m", "pipeline.main",
            f"--stream_name={a.stream_name}", *self.aws_flags(),
            "--initial_position=TRIM_HORIZON", "--write_dynamodb", *self.table_flags(),
            f"--snapshot_path=s3://{a.bucket}/snapshots", f"--dead_letter_path=s3://{a.bucket}/dead-letters",
            f"--timeout_secs={a.timeout_secs}", f"--window_secs={a.window_secs}",
            f"--update_secs={a.update_secs}", f"--max_out_of_orderness_secs={a.max_out_of_orderness_secs}",
            f"--idle_shard_secs={max(a.max_out_of_orderness_secs, a.update_secs)}",
            *stop_flags, *a.pipeline_flags,
        ]  # fmt: skip

    def run_pipeline(self):
        """One pipeline, as in production, until stopped (or, with --stop_when_idle_secs,
        until the stream has been quiet that long: everyone times out, it ends)."""
        idle = self.args.stop_when_idle_secs
        try:
            pipeline = self.start(
                "pipeline", self.pipeline_command(*([f"--stop_when_idle_secs={idle}"] if idle else []))
            )
            if pipeline.wait() != 0 and not self.stopping.is_set():
                raise RuntimeError(f"the pipeline failed; see {self.args.workdir}/pipeline.log")
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            self.failure = error
        finally:
            self.stopping.set()

    def read_status(self):
        s3 = self.client("s3")
        try:
            body = s3.get_object(Bucket=self.args.bucket, Key=f"snapshots/{STATUS_OBJECT}")["Body"].read()
        except Exception:  # noqa: BLE001 - no status yet, or AWS gone: the summary says less
            return
        self.status = json.loads(body)

    def start_dashboard(self) -> str:
        port = self.args.dashboard_port if is_free(self.args.dashboard_port) else free_port()
        command = [
            sys.executable, "-m", "pipeline.apps.dashboard",
            f"--snapshot_path=s3://{self.args.bucket}/snapshots", *self.aws_flags(),
            f"--level_table={self.tables()[0]}", f"--port={port}",
        ]  # fmt: skip
        self.start("dashboard", command)
        return f"http://127.0.0.1:{port}"

    def start_view(self, dashboard_url):
        command = [
            sys.executable, "-m", "pipeline.apps.live_view",
            f"--snapshot_path=s3://{self.args.bucket}/snapshots", *self.aws_flags(), *self.table_flags(),
            f"--dashboard_url={dashboard_url}",
        ] + (["--no-tty"] if self.args.no_tty else [])  # fmt: skip
        return self.start("view", command, log=False)  # the view draws on this terminal

    def summary(self) -> str:
        t = self.status
        if not t:
            return f"stopped: the pipeline published no status; logs in {self.args.workdir}"
        return (
            f"stopped: the pipeline {figures_line(t)}, committed up to {t.get('committed_until') or '—'}; "
            f"logs in {self.args.workdir}"
        )


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.workdir, exist_ok=True)
    logging.basicConfig(level=logging.ERROR)  # no import-time warnings of Beam's on the terminal
    embedded = not (args.aws_endpoint_url or args.real_aws)
    if embedded:
        os.environ.update(DUMMY_CREDENTIALS)  # the embedded AWS only: never real credentials
    system = LocalSystem(args)
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: (interrupted.set(), system.stopping.set()))
    signal.signal(signal.SIGTERM, lambda *_: (interrupted.set(), system.stopping.set()))
    try:
        if embedded:
            system.start_embedded_aws()
        system.create_resources()
        where = (
            "real AWS"
            if args.real_aws
            else f"AWS endpoint {system.endpoint}" + (" (embedded moto)" if embedded else "")
        )
        print(f"{where}; stream {args.stream_name}, bucket {args.bucket}", flush=True)
        dashboard_url = system.start_dashboard()
        print(f"dashboard: {dashboard_url}", flush=True)
        system.start_simulator()
        runner = threading.Thread(target=system.run_pipeline, name="pipeline", daemon=True)
        runner.start()
        system.start_view(dashboard_url)
        while not system.stopping.is_set():
            system.stopping.wait(0.5)
        runner.join(timeout=5 if interrupted.is_set() else None)
    except Exception as error:  # noqa: BLE001 - one line, not a traceback
        system.failure = error
    finally:
        for name in ("simulator", "pipeline"):
            system.stop(name)
        system.read_status()  # the pipeline's last word, before AWS goes
        for name in ("view", "dashboard", "moto"):
            system.stop(name)
    print(system.summary(), flush=True)
    if system.failure is not None:
        print(f"error: {system.failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
