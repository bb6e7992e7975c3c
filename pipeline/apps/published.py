"""Reading the tables the pipeline published, as its readers do (the live view, the
dashboard): thin boto3 calls, no Beam. A table that does not exist yet reads as None."""

from decimal import Decimal, InvalidOperation
from typing import NamedTuple

from botocore.exceptions import ClientError

from pipeline.aws import error_code
from pipeline.rules.tables import LEVEL_KEY, PIPELINE_NAME, PROGRESS_KEY


class LevelItem(NamedTuple):
    """One item of the level table."""

    level: str
    players: int
    as_of_ms: int | None = None  # the update instant the count reflects


def dynamodb_number(attribute) -> int | None:
    try:
        return int(Decimal(attribute["N"]))
    except (KeyError, TypeError, InvalidOperation, ValueError):
        return None


def read_level_table(client, table: str) -> tuple[LevelItem, ...] | None:
    """Every item of the level table; None when the table does not exist (yet)."""
    try:
        pages = client.get_paginator("scan").paginate(TableName=table)
        items = [item for page in pages for item in page.get("Items", [])]
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            return None
        raise
    levels = []
    for item in items:
        level = item.get(LEVEL_KEY, {}).get("S")
        players = dynamodb_number(item.get("playerCount"))
        if isinstance(level, str) and players is not None:
            levels.append(LevelItem(level, players, dynamodb_number(item.get("asOf"))))
    return tuple(levels)


def read_committed_ms(client, table: str, pipeline_name: str = PIPELINE_NAME) -> int | None:
    """asOf (epoch ms) of the committed checkpoint; None when there is none (yet)."""
    try:
        item = client.get_item(TableName=table, Key={PROGRESS_KEY: {"S": pipeline_name}}).get("Item")
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            return None
        raise
    return None if not item else dynamodb_number(item.get("asOf"))
