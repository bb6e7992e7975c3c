"""An independent reference model of docs/semantics.md, in plain Python, for the tests.

It shares no code with the pipeline: given the observations a stream means (player,
level, event time, event id), it computes every player's transitions by walking
their sorted history, then the snapshots and the DynamoDB totals by brute force.
"""

from collections import defaultdict


def model_transitions(observations, timeout_ms):
    """[(from, to, time_ms)] for observations [(player, level, time_ms, event_id, index)]."""
    by_player = defaultdict(dict)
    for player, level, time_ms, event_id, index in observations:
        # Exact duplicates (a re-sent event) collapse; the first keeps its arrival place.
        by_player[player].setdefault((event_id, index, time_ms, level), (time_ms, level))
    result = []
    for history in by_player.values():
        level, last_seen = None, None
        for time_ms, new_level in sorted(history.values(), key=lambda item: item[0]):
            if level is not None and time_ms >= last_seen + timeout_ms:
                result.append((level, "", last_seen + timeout_ms))
                level = None
            if level is None:
                result.append(("", new_level, time_ms))
            elif new_level != level:
                result.append((level, new_level, time_ms))
            level, last_seen = new_level, time_ms
        if level is not None:
            result.append((level, "", last_seen + timeout_ms))
    return sorted(result, key=lambda t: (t[2], t[0], t[1]))


def players_at(transitions, instant_ms):
    """players(L, t) for every L with a non-zero count: deltas strictly before t."""
    counts = defaultdict(int)
    for from_level, to_level, time_ms in transitions:
        if time_ms < instant_ms:
            if from_level:
                counts[from_level] -= 1
            if to_level:
                counts[to_level] += 1
    return {level: n for level, n in counts.items() if n != 0}


def model_snapshots(observations, timeout_secs=300, window_secs=60):
    """{window_end_ms: (level_player_counts, transitions)} for every window from the
    first window with a transition to the last one; transitions as {"from/to": n}."""
    transitions = model_transitions(observations, timeout_secs * 1000)
    if not transitions:
        return {}
    size = window_secs * 1000
    first = transitions[0][2] // size * size
    last = transitions[-1][2] // size * size
    snapshots = {}
    for start in range(first, last + size, size):
        end = start + size
        in_window = defaultdict(int)
        for from_level, to_level, time_ms in transitions:
            if start <= time_ms < end:
                in_window[f"{from_level}/{to_level}"] += 1
        snapshots[end] = (players_at(transitions, end), dict(in_window))
    return snapshots


def model_transition_totals(observations, timeout_secs=300):
    """The `transitions` table after the end of input: {"from/to": count}."""
    totals = defaultdict(int)
    for from_level, to_level, _ in model_transitions(observations, timeout_secs * 1000):
        totals[f"{from_level}/{to_level}"] += 1
    return dict(totals)


def snapshot_as_files(level_counts, transitions):
    """The parts of the JSON objects that depend on the counts, as the pipeline writes them."""
    level_player_counts = {k: v for k, v in sorted(level_counts.items()) if v > 0}
    entries = []
    for key in sorted(transitions):
        from_level, to_level = key.split("/", 1)
        entries.append({"from": from_level or None, "to": to_level or None, "count": transitions[key]})
    return level_player_counts, entries
