"""Window arithmetic, the per-window snapshots and their JSON. Plain Python, no Beam.

Every output of the pipeline is built from `IntervalSum`s: for one key, the sum of
its deltas over one `update` interval [end - update, end). A key is a level (the
deltas are -1/+1 player counts) or a transition "from/to" (the deltas are +1 each).
"""

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Iterable, NamedTuple

LEVEL = "level"
TRANSITION = "transition"

UPDATE_ID_NAMESPACE = uuid.UUID("5b0c1c5e-63a4-4a51-9d0c-0de5c0dec0de")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class IntervalSum(NamedTuple):
    kind: str  # LEVEL or TRANSITION
    key: str  # a level slug, or a transition "from/to"
    interval_end_ms: int
    total: int


class Snapshot(NamedTuple):
    window_start_ms: int
    window_end_ms: int
    level_counts: tuple[tuple[str, int], ...]  # players(L, window_end) > 0, sorted by level
    transition_counts: tuple[tuple[str, int], ...]  # transitions in the window, sorted by key


def window_start(time_ms: int, size_ms: int) -> int:
    """Start of the epoch-aligned window of `size_ms` that contains the instant."""
    return time_ms - time_ms % size_ms


def window_end_after(interval_end_ms: int, size_ms: int) -> int:
    """End of the window that contains the interval ending at `interval_end_ms`."""
    return window_start(interval_end_ms - 1, size_ms) + size_ms


def iso_utc(ms: int) -> str:
    """'YYYY-MM-DDTHH:MM:SSZ', with milliseconds only when they are not zero."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    if ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def update_id(window_start_ms: int, window_end_ms: int) -> str:
    """A UUID derived from the window only, so a rewrite is byte-identical."""
    return str(uuid.uuid5(UPDATE_ID_NAMESPACE, f"window/{window_start_ms}/{window_end_ms}"))


class SnapshotState(NamedTuple):
    """What the snapshot builder carries from one window to the next.

    levels: every level's players(L, t) that is not 0, as of next_window_end - size.
    next_window_end_ms: the end of the next window to publish; None before any event.
    """

    levels: tuple[tuple[str, int], ...] = ()
    next_window_end_ms: int | None = None

    def is_quiet(self) -> bool:
        return not self.levels


def build_snapshots(
    state: SnapshotState, sums: Iterable[IntervalSum], until_ms: int, size_ms: int
) -> tuple[SnapshotState, list[Snapshot], list[IntervalSum]]:
    """Publish every window that ends at or before `until_ms`, in order, from the
    first window with an event on, the quiet ones included.

    Returns the new state, the snapshots, and the sums that belong to later windows.
    """
    sums = list(sums)
    due = [s for s in sums if s.interval_end_ms <= until_ms]
    later = [s for s in sums if s.interval_end_ms > until_ms]
    next_end = state.next_window_end_ms
    if due:
        first_end = window_end_after(min(s.interval_end_ms for s in due), size_ms)
        if next_end is None or first_end < next_end:
            # Only the very first window, or a bug upstream (a late sum): either way
            # the counts stay right, since every sum is applied exactly once below.
            next_end = first_end if next_end is None else next_end
    if next_end is None:
        return state, [], later

    levels: dict[str, int] = dict(state.levels)
    by_window: dict[int, list[IntervalSum]] = {}
    for s in due:
        by_window.setdefault(max(window_end_after(s.interval_end_ms, size_ms), next_end), []).append(s)

    snapshots = []
    while next_end <= until_ms:
        transitions: dict[str, int] = {}
        for s in by_window.pop(next_end, []):
            if s.kind == LEVEL:
                levels[s.key] = levels.get(s.key, 0) + s.total
                if levels[s.key] == 0:
                    del levels[s.key]
            else:
                transitions[s.key] = transitions.get(s.key, 0) + s.total
        snapshots.append(
            Snapshot(
                next_end - size_ms,
                next_end,
                tuple(sorted((k, v) for k, v in levels.items() if v > 0)),
                tuple(sorted((k, v) for k, v in transitions.items() if v > 0)),
            )
        )
        next_end += size_ms
        if not levels and not by_window and not later:
            break  # quiet: the next event's window picks up from here
    new_state = SnapshotState(tuple(sorted(levels.items())), next_end)
    return new_state, snapshots, later


def next_snapshot_wake_ms(
    state: SnapshotState, pending: Iterable[IntervalSum], size_ms: int
) -> int | None:
    """When the builder must next publish: the next window while anyone is playing,
    else the window of the earliest pending sum; None when quiet with nothing pending."""
    pending = list(pending)
    candidates = [window_end_after(min(s.interval_end_ms for s in pending), size_ms)] if pending else []
    if state.next_window_end_ms is not None and (not state.is_quiet() or pending):
        candidates.append(state.next_window_end_ms)
    return min(candidates) if candidates else None


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


def history_names(window_end_ms: int) -> tuple[str, str]:
    stamp = iso_utc(window_end_ms)
    return f"history/levels/{stamp}.json", f"history/transitions/{stamp}.json"
