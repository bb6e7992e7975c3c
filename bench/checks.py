"""Every timed run's outputs against the reference model (pipeline.testing.reference_model):
each published snapshot window, and each DynamoDB item at the instant it says it is as
of (its asOf). A run that ended by itself must also have published every window and
left every level at 0; a live run that was cancelled is checked on what it published."""

import bisect
from collections import defaultdict

from pipeline.rules.times import iso_utc
from pipeline.testing.outputs import read_history_and_unpaired
from pipeline.testing.reference_model import model_snapshots, model_transitions, snapshot_as_files


def _scan(dynamodb, table: str) -> list:
    pages = dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    return [item for page in pages for item in page["Items"]]


class _ModelAt:
    """Values of the model as of any instant: transitions before t, players(L, t)."""

    def __init__(self, transitions):
        self.transition_times = defaultdict(list)
        level_deltas = defaultdict(list)
        for from_level, to_level, time_ms in transitions:  # sorted by time
            self.transition_times[f"{from_level}/{to_level}"].append(time_ms)
            if from_level:
                level_deltas[from_level].append((time_ms, -1))
            if to_level:
                level_deltas[to_level].append((time_ms, 1))
        self.level_times, self.level_sums = {}, {}
        for level, deltas in level_deltas.items():
            self.level_times[level] = [t for t, _ in deltas]
            running, sums = 0, []
            for _, delta in deltas:
                running += delta
                sums.append(running)
            self.level_sums[level] = sums

    def transitions_before(self, key: str, instant_ms: int) -> int:
        return bisect.bisect_left(self.transition_times.get(key, []), instant_ms)

    def players(self, level: str, instant_ms: int) -> int:
        n = bisect.bisect_left(self.level_times.get(level, []), instant_ms)
        return self.level_sums[level][n - 1] if n else 0


def check_run(
    observations,
    snapshot_path: str,
    s3=None,
    dynamodb=None,
    tables=None,
    timeout_secs: int = 300,
    window_secs: int = 60,
    finished: bool = True,
    writes=None,
) -> dict:
    """{"exact": bool, "windows", "items", "mismatches": [first few], "complete": bool}.
    `tables`: (level table, transitions table) or None; `writes`: the probes' log of
    every UpdateItem (table, key, as_of, started, ended, value), each checked too."""
    mismatches = []
    expected = model_snapshots(observations, timeout_secs, window_secs)
    history, unpaired = read_history_and_unpaired(snapshot_path, s3)
    mismatches += [
        f"window {name.removesuffix('.json')}: one of its two documents only" for name in unpaired[:3]
    ]
    expected_names = {iso_utc(end): end for end in expected}
    for name, (level_doc, transition_doc) in sorted(history.items()):
        if name not in expected_names:
            mismatches.append(f"window {name} is not in the model")
            continue
        want_levels, want_transitions = snapshot_as_files(*expected[expected_names[name]])
        if level_doc["level_player_counts"] != want_levels:
            mismatches.append(f"window {name}: level counts differ")
        if transition_doc["transitions"] != want_transitions:
            mismatches.append(f"window {name}: transitions differ")
    published = sorted(history)
    if published:  # no window may be missing before the last one published
        gaps = [n for n in expected_names if published[0] <= n <= published[-1] and n not in history]
        mismatches += [f"window {n} missing" for n in sorted(gaps)[:3]]
    complete = sorted(history) == sorted(expected_names)
    items = 0
    if dynamodb is not None and tables is not None:
        level_table, transitions_table = tables
        model = _ModelAt(model_transitions(observations, timeout_secs * 1000))
        for item in _scan(dynamodb, transitions_table):
            items += 1
            key, as_of = item["transitionLevels"]["S"], int(item["asOf"]["N"])
            want = model.transitions_before(key, as_of)
            if int(item["count"]["N"]) != want:
                mismatches.append(
                    f"transition {key} as of {iso_utc(as_of)}: {item['count']['N']}, model {want}"
                )
        levels_at_zero = True
        for item in _scan(dynamodb, level_table):
            items += 1
            level, as_of = item["levelId"]["S"], int(item["asOf"]["N"])
            count = int(item["playerCount"]["N"])
            levels_at_zero = levels_at_zero and count == 0
            want = model.players(level, as_of)
            if count != want:
                mismatches.append(f"level {level} as of {iso_utc(as_of)}: {count}, model {want}")
        complete = complete and levels_at_zero
        for table, key, as_of, _started, _ended, value in writes or ():
            if table not in tables:
                continue
            items += 1
            if table == transitions_table:
                want = model.transitions_before(key, as_of)
            else:
                want = model.players(key, as_of)
            if int(value) != want:
                mismatches.append(f"write {key} as of {iso_utc(as_of)}: {value}, model {want}")
    if finished and not complete:
        mismatches.append("the run ended but not every window was published or not every level is back at 0")
    return {
        "exact": not mismatches,
        "windows": len(history),
        "windows_expected": len(expected),
        "items": items,
        "complete": complete,
        "mismatches": mismatches[:5],
        "mismatch_count": len(mismatches),
    }
