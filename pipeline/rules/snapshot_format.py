"""Window arithmetic, the snapshot record and its JSON, in the original app's shapes.
Plain Python, no Beam."""

import json
import uuid
from typing import NamedTuple

from pipeline.rules.times import iso_utc

UPDATE_ID_NAMESPACE = uuid.UUID("5b0c1c5e-63a4-4a51-9d0c-0de5c0dec0de")


class Snapshot(NamedTuple):
    window_start_ms: int
    window_end_ms: int
    level_counts: tuple[tuple[str, int], ...]  # players(L, window_end) > 0, sorted by level
    transition_counts: tuple[tuple[str, int], ...]  # transitions in the window, sorted by key


def update_id(window_start_ms: int, window_end_ms: int) -> str:
    """A UUID derived from the window only, so a rewrite is byte-identical."""
    return str(uuid.uuid5(UPDATE_ID_NAMESPACE, f"window/{window_start_ms}/{window_end_ms}"))


# --- JSON, in the original app's shapes -------------------------------------------------


def _transition_entry(key: str, count: int) -> dict:
    from_level, to_level = key.split("/", 1) if "/" in key else (key, "")
    return {"from": from_level or None, "to": to_level or None, "count": count}


def level_information(snapshot: Snapshot, window_secs: int, history: bool = False) -> dict:
    body = _header(snapshot, window_secs, history)
    body["level_player_counts"] = dict(snapshot.level_counts)
    return body


def transition_information(snapshot: Snapshot, window_secs: int, history: bool = False) -> dict:
    body = _header(snapshot, window_secs, history)
    body["transitions"] = [_transition_entry(k, n) for k, n in snapshot.transition_counts]
    return body


def _header(snapshot: Snapshot, window_secs: int, history: bool) -> dict:
    body = {
        "update_time": iso_utc(snapshot.window_end_ms),
        "update_id": update_id(snapshot.window_start_ms, snapshot.window_end_ms),
        "update_interval_secs": window_secs,
    }
    if history:
        body["window_start"] = iso_utc(snapshot.window_start_ms)
        body["window_end"] = iso_utc(snapshot.window_end_ms)
    return body


def to_json_bytes(body: dict) -> bytes:
    """Deterministic bytes: the same snapshot always serialises identically."""
    return (json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


LEVELS_LATEST = "level_information.json"
TRANSITIONS_LATEST = "transition_information.json"
STATUS_OBJECT = "pipeline_status.json"  # what the last run did (pipeline.runtime.run_status)


def figures_line(status: dict) -> str:
    """The closing line's figures: "read N records, T transitions, D dead letters, W
    DynamoDB writes", or that the engine reported none."""
    if status.get("records_read") is None:
        return (
            f"reported no figures ({status.get('engine') or 'the engine'} gave no metrics; "
            "Flink's job server gives them only when a job ends)"
        )
    return (
        f"read {status['records_read']} records, {status['transitions']} transitions, "
        f"{sum(status['dead_letters'].values())} dead letters, {status['dynamodb_writes']} DynamoDB writes"
    )


def history_names(window_end_ms: int) -> tuple[str, str]:
    stamp = iso_utc(window_end_ms)
    return f"history/levels/{stamp}.json", f"history/transitions/{stamp}.json"


def is_partial(name: str) -> bool:
    """A local object still being written (pipeline.sinks.objects writes it under a hidden
    name, then renames it): readers skip it."""
    return name.startswith(".")
