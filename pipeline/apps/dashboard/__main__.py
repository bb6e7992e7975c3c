"""python -m pipeline.apps.dashboard --snapshot_path s3://bucket/prefix [--aws_endpoint_url URL]"""

import argparse
import asyncio
import errno
import logging
import signal
import sys

from pipeline.apps.dashboard.server import Settings, is_loopback, serve
from pipeline.rules.tables import LEVEL_TABLE


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1 to 65535, got {text}")
    return value


def parse_args(argv) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.apps.dashboard",
        description="Live web dashboard of what the level analytics pipeline has published: players "
        "per level, the last window's flows, where players get stuck, counts over time. Read-only; "
        "it reads the snapshot objects and the level table, never the pipeline's memory.",
    )
    parser.add_argument(
        "--snapshot_path",
        required=True,
        help="The pipeline's --snapshot_path: s3://bucket/prefix or a local directory.",
    )
    parser.add_argument(
        "--aws_endpoint_url",
        default=None,
        help="Endpoint of the AWS clients (moto, LocalStack). Default: none = real AWS, credentials "
        "from boto3's usual chain. Never sent to the browser.",
    )
    parser.add_argument("--aws_region", default="us-east-1", help="Default: us-east-1.")
    parser.add_argument(
        "--level_table",
        default=LEVEL_TABLE,
        help="DynamoDB table of players per level now; '' to show the latest window's counts only. "
        "Default: level-state.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="Address to listen on. Default: 127.0.0.1, this machine only. WARNING: any other address "
        "(e.g. 0.0.0.0) makes the dashboard, and so the player counts, readable by anyone who can "
        "reach the port: it has no login.",
    )
    parser.add_argument("--port", type=_port, default=8050, help="Default: 8050.")
    parser.add_argument(
        "--poll_secs",
        type=_positive,
        default=0.5,
        help="How often to check the latest levels object for a new window (a conditional GET). Default: 0.5.",
    )
    parser.add_argument(
        "--table_poll_secs",
        type=_positive,
        default=2.0,
        help="How often to read the level table and the pipeline status. Default: 2.",
    )
    args = parser.parse_args(argv)
    if args.snapshot_path.startswith("s3://") and not args.snapshot_path[len("s3://") :].split("/")[0]:
        parser.error(f"--snapshot_path {args.snapshot_path}: no bucket")
    return Settings(
        snapshot_path=args.snapshot_path,
        aws_region=args.aws_region,
        aws_endpoint_url=args.aws_endpoint_url,
        level_table=args.level_table,
        host=args.host,
        port=args.port,
        poll_secs=args.poll_secs,
        table_poll_secs=args.table_poll_secs,
    )


def main(argv=None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="dashboard: %(levelname)s %(message)s")
    if not is_loopback(settings.host):
        print(
            f"dashboard: WARNING listening on {settings.host}: anyone who can reach port {settings.port} "
            "can read the player counts",
            file=sys.stderr,
            flush=True,
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop, on_ready=lambda url: print(f"dashboard: {url}", flush=True))

    try:
        asyncio.run(run())
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            print(
                f"dashboard: port {settings.port} on {settings.host} is in use; pass --port",
                file=sys.stderr,
            )
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
