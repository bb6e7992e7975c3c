"""The ledger, as plain functions: level counts and transition totals closed one update
instant at a time, snapshots and checkpoints at window ends (docs/semantics.md, "Level
counts" and "Outputs", and its worked example)."""

from pipeline.rules.ledger import (
    LEVEL,
    TRANSITION,
    Checkpoint,
    IntervalSum,
    Ledger,
    advance_ledger,
    next_wake_ms,
)
from pipeline.rules.player_state import transitions_of

S = 1000  # ms
TIMEOUT = 300 * S

U, W = 5 * S, 60 * S


def sums_of(transitions, update_ms=U):
    """IntervalSums the way CountPerInterval makes them."""
    acc = {}
    for t in transitions:
        end = t.time_ms - t.time_ms % update_ms + update_ms
        deltas = [((TRANSITION, t.key), 1)]
        if t.from_level:
            deltas.append(((LEVEL, t.from_level), -1))
        if t.to_level:
            deltas.append(((LEVEL, t.to_level), 1))
        for (kind, key), d in deltas:
            acc[(kind, key, end)] = acc.get((kind, key, end), 0) + d
    return [IntervalSum(kind, key, end, n) for (kind, key, end), n in acc.items()]


WORKED = transitions_of([(10 * S, "a"), (65 * S, "b"), (90 * S, "b")], TIMEOUT) + transitions_of(
    [(20 * S, "a"), (420 * S, "c")], TIMEOUT
)


def test_worked_example_snapshots():
    step = advance_ledger(Ledger(), sums_of(WORKED), 10**9, U, W)
    by_end = {s.window_end_ms // S: (dict(s.level_counts), dict(s.transition_counts)) for s in step.snapshots}
    assert by_end[60] == ({"a": 2}, {"/a": 2})
    assert by_end[120] == ({"a": 1, "b": 1}, {"a/b": 1})
    assert by_end[360] == ({"b": 1}, {"a/": 1})
    assert by_end[420] == ({}, {"b/": 1})
    assert by_end[480] == ({"c": 1}, {"/c": 1})
    assert by_end[780] == ({}, {"c/": 1})
    assert sorted(by_end) == list(range(60, 781, 60))  # quiet windows included, then it stops
    assert step.ledger.levels == ()


def test_counter_updates_carry_absolute_values_of_changed_keys_only():
    step = advance_ledger(Ledger(), sums_of(WORKED), 10**9, U, W)
    updates = {u.as_of_ms // S: u for u in step.updates}
    assert dict(updates[15].levels) == {"a": 1} and dict(updates[15].transition_totals) == {"/a": 1}
    assert dict(updates[25].levels) == {"a": 2} and dict(updates[25].transition_totals) == {"/a": 2}
    assert dict(updates[70].levels) == {"a": 1, "b": 1}  # p1 moved a -> b at 00:01:05
    assert dict(updates[325].levels) == {"a": 0}  # p2 left a at 00:05:20
    assert dict(updates[725].levels) == {"c": 0} and dict(updates[725].transition_totals) == {"c/": 1}
    assert 30 not in updates and 60 not in updates  # nothing changed: no write, window end or not
    checkpoints = {c.as_of_ms // S: c for c in step.checkpoints}
    assert checkpoints[60] == Checkpoint(60 * S, (("a", 2),), (("/a", 2),))
    assert set(checkpoints) == {s.window_end_ms // S for s in step.snapshots}  # one per window end


def test_closing_in_several_steps_equals_closing_at_once():
    all_sums = sums_of(WORKED)
    ledger, pending, snapshots = Ledger(), list(all_sums), []
    for until in range(0, 900 * S, 7 * S):
        step = advance_ledger(ledger, pending, until, U, W)
        ledger, pending = step.ledger, step.later
        snapshots += step.snapshots
    assert snapshots == advance_ledger(Ledger(), all_sums, 10**9, U, W).snapshots


def test_resuming_from_a_checkpoint_skips_what_was_applied_and_continues_exactly():
    once = advance_ledger(Ledger(), sums_of(WORKED), 10**9, U, W)
    checkpoint = next(c for c in once.checkpoints if c.as_of_ms == 120 * S)
    resumed = advance_ledger(Ledger.resume_from(checkpoint, U), sums_of(WORKED), 10**9, U, W)
    assert resumed.snapshots == [s for s in once.snapshots if s.window_end_ms > 120 * S]
    assert resumed.updates == [u for u in once.updates if u.as_of_ms > 120 * S]
    assert {s.interval_end_ms for s in resumed.already_applied} <= set(range(0, 120 * S + 1, U))


def test_a_quiet_ledger_sleeps_and_a_new_event_fills_the_gap():
    first = transitions_of([(10 * S, "a")], TIMEOUT)  # leaves at 310 s
    again = transitions_of([(1000 * S, "b")], TIMEOUT)
    step = advance_ledger(Ledger(), sums_of(first), 10**9, U, W)
    assert step.snapshots[-1].window_end_ms == 360 * S
    assert next_wake_ms(step.ledger, [], W) is None
    step2 = advance_ledger(step.ledger, sums_of(again), 10**9, U, W)
    ends = [s.window_end_ms // S for s in step2.snapshots]
    assert ends == list(range(420, 1321, 60))
    assert step2.snapshots[0] == (360 * S, 420 * S, (), ())


def test_a_count_that_can_never_return_to_zero_stops_the_ledger_instead_of_looping():
    # A +1 with no matching -1 (drift, impossible under the contract): players "stay" forever.
    drifted = [IntervalSum(LEVEL, "a", 60 * S, 1), IntervalSum(TRANSITION, "/a", 60 * S, 1)]
    step = advance_ledger(Ledger(), drifted, 60 * S, U, W)
    stale_after = TIMEOUT + W
    assert next_wake_ms(step.ledger, [], W, stale_after) == 120 * S  # still within the timeout
    late = advance_ledger(step.ledger, [], 60 * S + stale_after + W, U, W)
    assert late.ledger.levels == (("a", 1),)
    assert next_wake_ms(late.ledger, [], W, stale_after) is None
    assert next_wake_ms(late.ledger, [], W) is not None  # without the guard it would wake forever
