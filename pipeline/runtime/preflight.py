"""Before a run starts: the AWS resources its flags name exist. A typo in a stream,
bucket or table name then stops the run at once with what to change, instead of
failing minutes later inside a worker with a traceback.

Only "does not exist" is judged here, with calls the minimal IAM policy already allows
(ListShards, ListBucket, DescribeTable). Any other failure (AWS unreachable, throttling,
a policy without one of those) is left to the run itself, which retries with backoff
and fails loudly if it must.
"""

import logging

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.aws import error_code
from pipeline.sinks.objects import split_s3_path

_LOG = logging.getLogger(__name__)
_MISSING = {"ResourceNotFoundException", "NoSuchBucket"}


def _is_missing(call) -> bool:
    try:
        call()
    except ClientError as error:
        if error_code(error) in _MISSING:
            return True
        _LOG.info("preflight: %s (left to the run)", error)
    except BotoCoreError as error:
        _LOG.info("preflight: %s (left to the run)", error)
    return False


def missing_resources(opts, kinesis=None, s3=None, dynamodb=None) -> list[str]:
    """What the flags name that does not exist, one sentence each saying what to change.
    `opts`: LevelAnalyticsOptions; the clients are made on demand (ClientFactory)."""
    problems = []
    if opts.stream_name and kinesis is not None:
        client = kinesis()
        if _is_missing(lambda: client.list_shards(StreamName=opts.stream_name, MaxResults=1)):
            problems.append(
                f"Kinesis stream {opts.stream_name!r} does not exist in {opts.aws_region}: "
                "fix --stream_name (or --aws_region, --aws_endpoint_url)"
            )
    for flag, path in (
        ("--snapshot_path", opts.snapshot_path),
        ("--dead_letter_path", opts.dead_letter_path),
    ):
        bucket_and_key = split_s3_path(path or "")
        if bucket_and_key is None or s3 is None:
            continue
        bucket, key = bucket_and_key
        client = s3()
        if _is_missing(
            lambda client=client, bucket=bucket, key=key: client.list_objects_v2(
                Bucket=bucket, Prefix=key, MaxKeys=1
            )
        ):
            problems.append(f"S3 bucket {bucket!r} of {flag} does not exist: create it or fix {flag}")
    if opts.write_dynamodb and not opts.create_tables and dynamodb is not None:
        client = dynamodb()
        for flag, table in (
            ("--level_table", opts.level_table),
            ("--transitions_table", opts.transitions_table),
            ("--progress_table", opts.progress_table),
        ):
            if _is_missing(lambda client=client, table=table: client.describe_table(TableName=table)):
                problems.append(
                    f"DynamoDB table {table!r} ({flag}) does not exist: create it, fix {flag}, "
                    "or pass --create_tables"
                )
    return problems
