"""The ledger, as plain functions: level counts and transition totals closed one update
instant at a time, snapshots and checkpoints at window ends (docs/semantics.md, "Level
counts" and "Outputs", and its worked example)."""

import random
from itertools import islice

from pipeline.rules.ledger import (
    LEVEL,
    TRANSITION,
    Checkpoint,
    CounterUpdate,
    IntervalSum,
    Ledger,
    advance_ledger,
    close_everything,
    coalesce_updates,
    next_wake_ms,
    values_in,
)
from pipeline.rules.player_state import Transition, transitions_of

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


def test_a_step_checkpoints_its_latest_window_end_as_of_then():
    # Up to 70 s: the window end at 60 s, then p1's move a -> b (at 65 s, closed at 70 s).
    step = advance_ledger(Ledger(), sums_of(WORKED), 70 * S, U, W)
    assert step.checkpoints == [Checkpoint(60 * S, {"a": 2}, {"/a": 2})]
    assert step.ledger.levels == (("a", 1), ("b", 1))
    # A backlog of many windows at once: one checkpoint, the last window end's.
    whole = advance_ledger(Ledger(), sums_of(WORKED), 10**9, U, W)
    assert whole.checkpoints == [
        Checkpoint(780 * S, {}, {"/a": 2, "a/b": 1, "a/": 1, "b/": 1, "/c": 1, "c/": 1})
    ]
    assert advance_ledger(Ledger(), sums_of(WORKED), 55 * S, U, W).checkpoints == []  # no window end yet


def test_the_checkpoint_of_any_step_is_the_ledger_at_its_window_end():
    all_sums = sums_of(WORKED)
    for until in range(0, 900 * S, 3 * S):
        step = advance_ledger(Ledger(), all_sums, until, U, W)
        assert len(step.checkpoints) == (1 if step.snapshots else 0)
        for checkpoint in step.checkpoints:
            assert checkpoint.as_of_ms == step.snapshots[-1].window_end_ms
            exact = advance_ledger(Ledger(), all_sums, checkpoint.as_of_ms, U, W).ledger
            assert checkpoint.levels == dict(exact.levels)
            assert checkpoint.transition_totals == exact.transition_totals


def test_a_step_leaves_the_ledger_it_was_given_as_it_was():
    """The engine's state cache may hold the ledger a step starts from: a failed step is retried from it."""
    before = advance_ledger(Ledger(), sums_of(WORKED), 70 * S, U, W).ledger
    copy = before._replace(transition_totals=dict(before.transition_totals))
    advance_ledger(before, sums_of(WORKED), 10**9, U, W)
    assert before == copy


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
    (checkpoint,) = advance_ledger(Ledger(), sums_of(WORKED), 130 * S, U, W).checkpoints
    assert checkpoint.as_of_ms == 120 * S
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
    # Once the input has ended, a +1 with no matching -1 (drift, impossible under the
    # contract): players "stay" forever.
    drifted = [IntervalSum(LEVEL, "a", 60 * S, 1), IntervalSum(TRANSITION, "/a", 60 * S, 1)]
    step = advance_ledger(Ledger(), drifted, 60 * S, U, W)
    stale_after = TIMEOUT + W
    assert next_wake_ms(step.ledger, [], W, stale_after) == 120 * S  # still within the timeout
    late = advance_ledger(step.ledger, [], 60 * S + stale_after + W, U, W)
    assert late.ledger.levels == (("a", 1),)
    assert next_wake_ms(late.ledger, [], W, stale_after) is None
    assert next_wake_ms(late.ledger, [], W) is not None  # without the guard it would wake forever


def test_a_ledger_resumed_with_a_drifted_count_still_stops_once_the_input_has_ended():
    """After a restart the ledger does not know its last change; the checkpoint's instant
    bounds it, so the staleness rule still ends the walk instead of looping forever."""
    resumed = Ledger.resume_from(Checkpoint(120 * S, {"a": 1}, {"/a": 1}), U)
    steps = list(islice(close_everything(resumed, [], U, W, TIMEOUT + W), 1000))
    assert 0 < len(steps) < 1000
    assert steps[-1].ledger.next_instant_ms <= 120 * S + TIMEOUT + 2 * W + U


def test_closing_everything_takes_the_steps_of_a_stream_whose_input_ended():
    steps = list(close_everything(Ledger(), sums_of(WORKED), U, W, TIMEOUT + W))
    once = advance_ledger(Ledger(), sums_of(WORKED), 10**9, U, W)
    assert [s for step in steps for s in step.snapshots] == once.snapshots
    assert [u for step in steps for u in step.updates] == once.updates
    assert steps[-1].checkpoints == once.checkpoints and steps[-1].ledger.levels == ()
    drifted = [IntervalSum(LEVEL, "a", 60 * S, 1), IntervalSum(TRANSITION, "/a", 60 * S, 1)]
    stuck = list(close_everything(Ledger(), drifted, U, W, TIMEOUT + W))  # ends: stale, not looping
    assert stuck[-1].ledger.levels == (("a", 1),) and len(stuck) < 10


def test_a_ledger_of_older_pairs_is_read_too():
    """A ledger stored by an earlier version holds sorted pairs where this one holds dicts."""
    pairs = Ledger((("a", 1),), (("/a", 1),), (), 65 * S, 60 * S)
    step = advance_ledger(
        pairs, [IntervalSum(TRANSITION, "a/", 70 * S, 1), IntervalSum(LEVEL, "a", 70 * S, -1)], 70 * S, U, W
    )
    assert (step.ledger.levels, step.ledger.transition_totals) == ((), {"/a": 1, "a/": 1})


# --- Catching up: one value per key per step ----------------------------------------------


def test_coalescing_keeps_each_keys_latest_value_at_the_instant_it_changed():
    step = advance_ledger(Ledger(), sums_of(WORKED), 10**9, U, W)
    coalesced = coalesce_updates(step.updates)
    values = {(k, u.as_of_ms // S): n for u in coalesced for k, n in u.levels + u.transition_totals}
    assert values == {
        ("/a", 25): 2,
        ("a/b", 70): 1,
        ("a", 325): 0,
        ("a/", 325): 1,
        ("b", 395): 0,
        ("b/", 395): 1,
        ("/c", 425): 1,
        ("c", 725): 0,
        ("c/", 725): 1,
    }
    assert [u.as_of_ms for u in coalesced] == sorted(u.as_of_ms for u in coalesced)
    assert values_in(coalesced) == 9 < values_in(step.updates) == 15


def test_coalescing_writes_only_values_the_update_grid_had_and_the_latest_of_each_key():
    rng = random.Random(5)
    transitions = []
    for _ in range(40):
        start = rng.randrange(0, 600) * S
        path = [
            (start + i * rng.randrange(1, 40) * S, rng.choice("abcdef")) for i in range(rng.randrange(1, 8))
        ]
        transitions += transitions_of(sorted(path), TIMEOUT)
    step = advance_ledger(Ledger(), sums_of(transitions), 10**9, U, W)
    every = {(k, u.as_of_ms): n for u in step.updates for k, n in u.levels + u.transition_totals}
    latest = {}
    for (k, as_of), n in sorted(every.items(), key=lambda item: item[0][1]):
        latest[k] = (as_of, n)
    coalesced = {
        k: (u.as_of_ms, n) for u in coalesce_updates(step.updates) for k, n in u.levels + u.transition_totals
    }
    assert coalesced == latest
    assert all((k, as_of) in every for k, (as_of, _) in coalesced.items())


def test_live_one_instant_per_step_is_written_as_it_is():
    update = CounterUpdate(70 * S, (("a", 1), ("b", 1)), (("a/b", 1),))
    assert coalesce_updates([update]) == [update]
    assert coalesce_updates([]) == []


# --- Many levels: a thousand levels, fifty thousand transition pairs ----------------------


def many_transitions(levels=1000, pairs=50_000, minutes=30, seed=3):
    """`pairs` players, each entering a level, moving to another (a distinct pair each)
    and timing out, spread over `minutes`: `pairs` distinct "A/B" keys plus the entries
    and exits of every level."""
    rng = random.Random(seed)
    names = [f"campaign-level-{i:04d}" for i in range(levels)]
    seen, transitions = set(), []
    while len(seen) < pairs:
        a, b = rng.sample(names, 2)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        enter = rng.randrange(0, minutes * 60 * S - TIMEOUT - 60 * S)
        move = enter + rng.randrange(1, 60 * S)
        transitions += [Transition("", a, enter), Transition(a, b, move), Transition(b, "", move + TIMEOUT)]
    return transitions


def test_a_thousand_levels_and_fifty_thousand_pairs_close_exactly_in_any_steps():
    transitions = many_transitions()
    all_sums = sums_of(transitions)
    once = advance_ledger(Ledger(), all_sums, 10**15, U, W)
    expected = {}
    for t in transitions:
        expected[t.key] = expected.get(t.key, 0) + 1
    assert len(expected) >= 50_000 and once.ledger.transition_totals == expected
    assert once.ledger.levels == ()  # everybody left
    # Steps of ten windows each, resumed from a checkpoint half way: the same snapshots and totals.
    ledger, pending, snapshots, checkpoints = Ledger(), list(all_sums), [], []
    start = min(s.interval_end_ms for s in all_sums)
    for until in range(start, start + 40 * W, 10 * W):
        step = advance_ledger(ledger, pending, until, U, W)
        ledger, pending = step.ledger, step.later
        snapshots += step.snapshots
        checkpoints += step.checkpoints
    assert snapshots == once.snapshots and ledger.transition_totals == expected
    middle = checkpoints[len(checkpoints) // 2]
    resumed = advance_ledger(Ledger.resume_from(middle, U), all_sums, 10**15, U, W)
    assert resumed.snapshots == [s for s in once.snapshots if s.window_end_ms > middle.as_of_ms]
    assert resumed.ledger.transition_totals == expected
