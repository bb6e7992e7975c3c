"""What the dashboard shows, as pure functions of what the pipeline published (no I/O).

Level slugs come from player events: here they are data (plain strings, dictionary keys),
never markup. The page renders them as text.
"""

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from pipeline.apps.published import LevelItem
from pipeline.rules.times import iso_utc, parse_iso_ms

OUTSIDE = "(outside)"  # the label of "outside the game" (null from/to) in flows
SPANS = {"15m": 900, "1h": 3600, "1d": 86400}  # spans of the stuck table and the replay scrubber
SERIES_SECS = 3600  # the "over time" chart: the last hour
TOP_TRANSITIONS = 10
_WINDOW_END = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z")
_SECRET_KEY = re.compile(r"secret|password|token|credential|endpoint|access_?key", re.IGNORECASE)


class Transition(NamedTuple):
    from_level: str | None  # None: from outside the game (an entry)
    to_level: str | None  # None: to outside the game (an exit)
    count: int


# --- levels and their campaign order ----------------------------------------------------


def level_order(catalogue: Iterable[str], seen: Iterable[str]) -> list[str]:
    """The catalogue in campaign order, then every other level seen, sorted by name."""
    known = list(dict.fromkeys(catalogue))
    listed = set(known)
    return known + sorted({level for level in seen if level not in listed})


def _count(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def counts_of(levels_object: dict | None) -> dict[str, int]:
    """level_player_counts of a levels object, keeping only well-formed entries."""
    counts = (levels_object or {}).get("level_player_counts")
    if not isinstance(counts, dict):
        return {}
    return {level: n for level, n in counts.items() if isinstance(level, str) and (_count(n) or 0) > 0}


def transitions_of(transitions_object: dict | None) -> list[Transition]:
    """The transitions of a transitions object, keeping only well-formed entries."""
    entries = (transitions_object or {}).get("transitions")
    if not isinstance(entries, list):
        return []
    result = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        source, target, count = entry.get("from"), entry.get("to"), _count(entry.get("count"))
        if not all(value is None or isinstance(value, str) for value in (source, target)):
            continue
        if count is None or count <= 0 or source == target:  # never from == to; nor outside/outside
            continue
        result.append(Transition(source, target, count))
    return result


def level_rows(counts: dict[str, int], catalogue: list[str]) -> list[dict]:
    """Players per level in campaign order: every catalogue level (0 when empty), then the
    other levels that have players, by name."""
    extra = [level for level, n in counts.items() if n > 0]
    return [{"level": level, "players": counts.get(level, 0)} for level in level_order(catalogue, extra)]


# --- flows ------------------------------------------------------------------------------


def sankey(transitions: list[Transition], catalogue: list[str]) -> dict:
    """Sankey nodes and links of one window, as a two-column diagram: where players came
    from on the left ("(outside)" first), where they went on the right ("(outside)" last).
    A level that is both a source and a target has a node on each side, so the graph has
    no cycle whatever the window holds (A/B and B/A included).

    {"nodes": [{"label", "outside", "side"}], "links": [{"source", "target", "count"}]},
    source and target are node indexes."""
    seen = {level for t in transitions for level in (t.from_level, t.to_level) if level is not None}
    order = level_order(catalogue, seen)
    sources = {t.from_level for t in transitions}
    targets = {t.to_level for t in transitions}
    left = ([None] if None in sources else []) + [level for level in order if level in sources]
    right = [level for level in order if level in targets] + ([None] if None in targets else [])
    nodes = [
        {"label": OUTSIDE if level is None else level, "outside": level is None, "side": side}
        for side, column in (("from", left), ("to", right))
        for level in column
    ]
    left_index = {level: i for i, level in enumerate(left)}
    right_index = {level: len(left) + i for i, level in enumerate(right)}
    totals: dict[tuple, int] = defaultdict(int)
    for t in transitions:
        totals[(left_index[t.from_level], right_index[t.to_level])] += t.count
    links = [{"source": s, "target": d, "count": n} for (s, d), n in sorted(totals.items())]
    return {"nodes": nodes, "links": links}


def top_transitions(transitions: list[Transition], limit: int = TOP_TRANSITIONS) -> list[dict]:
    """The most frequent transitions first (ties by names); from/to None = outside."""
    totals: dict[tuple, int] = defaultdict(int)
    for t in transitions:
        totals[(t.from_level, t.to_level)] += t.count
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0][0] or "", item[0][1] or ""))
    return [{"from": source, "to": target, "count": n} for (source, target), n in ranked[:limit]]


# --- where players get stuck ------------------------------------------------------------


def stuck_table(windows: Iterable[list[Transition]], catalogue: list[str]) -> list[dict]:
    """Per level, over the given windows' transitions: moves out of it (all), exits (out of
    the game), moves back (to an earlier level in campaign order), moves forward, and the
    shares of the moves out that are exits and moves back. Levels nobody left are not
    listed. Highest exit share first (then most exits, then campaign order)."""
    totals: dict[tuple, int] = defaultdict(int)
    for transitions in windows:
        for t in transitions:
            totals[(t.from_level, t.to_level)] += t.count
    seen = {level for pair in totals for level in pair if level is not None}
    rank = {level: i for i, level in enumerate(level_order(catalogue, seen))}
    rows: dict[str, dict] = {}
    for (source, target), n in totals.items():
        if source is None:
            continue  # an entry into the game leaves no level
        row = rows.setdefault(source, {"level": source, "out": 0, "exits": 0, "back": 0, "forward": 0})
        row["out"] += n
        if target is None:
            row["exits"] += n
        elif rank[target] < rank[source]:
            row["back"] += n
        else:
            row["forward"] += n
    for row in rows.values():
        row["exit_share"] = row["exits"] / row["out"]
        row["back_share"] = row["back"] / row["out"]
    return sorted(rows.values(), key=lambda r: (-r["exit_share"], -r["exits"], rank[r["level"]]))


# --- over time --------------------------------------------------------------------------


def series(windows: list[tuple[str, dict[str, int]]], catalogue: list[str]) -> dict:
    """Total players and players per level at each window end, oldest first.

    windows: (window_end, {level: players}). Every level with players in some window has
    a series (0 where it had none), in campaign order."""
    ordered = sorted(windows, key=lambda pair: parse_window_end(pair[0]) or 0)
    seen = {level for _, counts in ordered for level, n in counts.items() if n > 0}
    levels = [level for level in level_order(catalogue, seen) if level in seen]
    return {
        "windows": [end for end, _ in ordered],
        "total": [sum(counts.values()) for _, counts in ordered],
        "levels": {level: [counts.get(level, 0) for _, counts in ordered] for level in levels},
        "order": levels,
    }


# --- one window, the live state ---------------------------------------------------------


def window_view(levels_object: dict, transitions: list[Transition] | None, catalogue: list[str]) -> dict:
    """Everything the page shows of one window: its level map and its flows (transitions
    None when the window's transitions object is not there)."""
    counts = counts_of(levels_object)
    view = {
        key: levels_object.get(key)
        for key in ("update_time", "update_id", "update_interval_secs", "window_start", "window_end")
        if isinstance(levels_object.get(key), str | int) and not isinstance(levels_object.get(key), bool)
    }
    view["levels"] = level_rows(counts, catalogue)
    view["total_players"] = sum(counts.values())
    view["transitions"] = None
    if transitions is not None:
        view["transitions"] = {
            "total": sum(t.count for t in transitions),
            "entries": sum(t.count for t in transitions if t.from_level is None),
            "exits": sum(t.count for t in transitions if t.to_level is None),
            "top": top_transitions(transitions),
            "sankey": sankey(transitions, catalogue),
        }
    return view


def live_levels(
    table: list[LevelItem] | None, levels_object: dict | None, catalogue: list[str]
) -> dict | None:
    """Players per level right now: the level-state table (updated every few seconds of
    event time) when it has items at least as new as the latest window, else the latest
    window's counts. None when neither is there."""
    window_ms = parse_window_end((levels_object or {}).get("update_time"))
    table_ms = max((item.as_of_ms for item in table or () if item.as_of_ms is not None), default=None)
    if table and (window_ms is None or (table_ms is not None and table_ms >= window_ms)):
        counts = {item.level: item.players for item in table if item.players > 0}
        source, as_of = "table", None if table_ms is None else iso_utc(table_ms)
    elif levels_object is not None:
        counts = counts_of(levels_object)
        source, as_of = "window", levels_object.get("update_time")
    else:
        return None
    return {
        "source": source,
        "as_of": as_of,
        "levels": level_rows(counts, catalogue),
        "total_players": sum(counts.values()),
    }


def staleness(published_ms: int | None, interval_secs, now_ms: int) -> dict:
    """'waiting' before anything is published; 'stale' when no new window came for longer
    than two windows of wall clock; else 'live'."""
    if published_ms is None:
        return {"state": "waiting", "age_secs": None, "limit_secs": None}
    interval = _count(interval_secs)
    limit = 2 * (interval if interval and interval > 0 else 60)
    age = max(0, now_ms - published_ms) // 1000
    return {
        "state": "stale" if now_ms - published_ms > limit * 1000 else "live",
        "age_secs": age,
        "limit_secs": limit,
    }


def status_rows(status: dict | None) -> list[list[str]] | None:
    """pipeline_status.json as (key, value) rows, nested objects flattened as 'a.b',
    whatever its keys are. Keys that look like secrets and URL values are left out."""
    if not isinstance(status, dict):
        return None
    rows = []

    def visit(prefix: str, value):
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                visit(f"{prefix}.{key}" if prefix else str(key), value[key])
            return
        if _SECRET_KEY.search(prefix):
            return
        if isinstance(value, list):
            text = ", ".join(str(item) for item in value)
        elif value is None:
            text = "—"
        else:
            text = str(value)
        if "://" in text:
            return
        rows.append([prefix, text])

    visit("", status)
    return rows


# --- window names -----------------------------------------------------------------------


def parse_window_end(text) -> int | None:
    """'2026-12-02T10:01:00Z' (history name or update_time) to epoch ms; None otherwise."""
    if not isinstance(text, str) or not _WINDOW_END.fullmatch(text):
        return None
    return parse_iso_ms(text)
