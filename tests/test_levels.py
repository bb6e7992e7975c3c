"""The player state machine and the ledger, as plain functions: SEMANTICS.md's rules."""

from pipeline.rules.ledger import (
    LEVEL,
    TRANSITION,
    Checkpoint,
    IntervalSum,
    Ledger,
    advance_ledger,
    next_wake_ms,
)
from pipeline.rules.player_state import PlayerTimeline, Transition, transitions_of

S = 1000  # ms
TIMEOUT = 300 * S


def keys(transitions):
    return [(t.key, t.time_ms // S) for t in transitions]


def test_worked_example_transitions():
    p1 = transitions_of([(10 * S, "a"), (65 * S, "b"), (90 * S, "b")], TIMEOUT)
    p2 = transitions_of([(20 * S, "a"), (420 * S, "c")], TIMEOUT)
    assert keys(p1) == [("/a", 10), ("a/b", 65), ("b/", 390)]  # p1 times out at 00:06:30
    assert keys(p2) == [("/a", 20), ("a/", 320), ("/c", 420), ("c/", 720)]  # 00:05:20, back at 00:07:00


def test_an_observation_exactly_at_the_timeout_comes_after_the_exit_and_re_enters():
    assert keys(transitions_of([(0, "a"), (TIMEOUT, "a")], TIMEOUT)) == [
        ("/a", 0),
        ("a/", 300),
        ("/a", 300),
        ("a/", 600),
    ]


def test_an_observation_one_ms_before_the_timeout_keeps_the_player_in():
    assert keys(transitions_of([(0, "a"), (TIMEOUT - 1, "a")], TIMEOUT)) == [("/a", 0), ("a/", 599)]


def test_the_same_level_twice_is_no_transition():
    assert keys(transitions_of([(0, "a"), (5 * S, "a"), (9 * S, "b"), (12 * S, "b")], TIMEOUT)) == [
        ("/a", 0),
        ("a/b", 9),
        ("b/", 312),
    ]


def drive(arrivals, fire_at):
    """Feed (time_ms, level, id) arrivals to a PlayerTimeline, firing at the given instants
    after the given arrival index, as the tracker DoFn does; return the transitions."""
    timeline, pending, out, late = PlayerTimeline(), [], [], []
    for index, (time_ms, level, observation_id) in enumerate(arrivals):
        if timeline.is_late(time_ms):
            late.append(observation_id)
        else:
            timeline, item = timeline.accept(time_ms, level, observation_id)
            pending.append(item)
        for until in fire_at.get(index, []):
            timeline, made, pending = timeline.advance(pending, until, TIMEOUT)
            out += made
    timeline, made, pending = timeline.advance(pending, 10**12, TIMEOUT)
    return keys(out + made), late, timeline


def test_arrival_order_does_not_matter_before_the_watermark_passes():
    in_order = [(10 * S, "a", ("e1", 0)), (20 * S, "b", ("e2", 0)), (30 * S, "c", ("e3", 0))]
    shuffled = [in_order[2], in_order[0], in_order[1]]
    assert (
        drive(in_order, {})[0]
        == drive(shuffled, {})[0]
        == [("/a", 10), ("a/b", 20), ("b/c", 30), ("c/", 330)]
    )


def test_an_observation_before_what_was_applied_is_late_and_not_applied():
    arrivals = [(10 * S, "a", ("e1", 0)), (20 * S, "b", ("e2", 0)), (15 * S, "c", ("e3", 0))]
    transitions, late, _ = drive(arrivals, {1: [20 * S]})
    assert late == [("e3", 0)]
    assert transitions == [("/a", 10), ("a/b", 20), ("b/", 320)]


def test_duplicates_are_harmless_even_with_two_contexts_of_one_player_in_one_event():
    two_levels = [(10 * S, "a", ("e1", 0)), (10 * S, "b", ("e1", 1))]
    once, _, _ = drive(two_levels, {})
    # The duplicate arrives before, and then exactly at, the instant already applied.
    assert drive(two_levels + two_levels, {})[0] == once
    assert drive(two_levels + two_levels, {1: [10 * S]})[0] == once
    assert once == [("/a", 10), ("a/b", 10), ("b/", 310)]


def test_a_player_who_left_is_forgotten():
    _, _, timeline = drive([(10 * S, "a", ("e1", 0))], {})
    assert timeline.is_done()


def test_wake_is_the_earliest_pending_observation_or_the_timeout():
    timeline, _ = PlayerTimeline().accept(50 * S, "a", ("e", 0))
    assert timeline.wake_at_ms(TIMEOUT) == 50 * S
    timeline, _, _ = timeline.advance([], 50 * S, TIMEOUT)
    assert timeline.wake_at_ms(TIMEOUT) is None  # nothing was pending: fresh timeline
    timeline, item = PlayerTimeline().accept(50 * S, "a", ("e", 0))
    timeline, _, _ = timeline.advance([item], 50 * S, TIMEOUT)
    assert timeline.wake_at_ms(TIMEOUT) == 350 * S


# --- the ledger ------------------------------------------------------------------------

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


def test_transition_keys_use_empty_for_outside():
    assert Transition("", "a", 0).key == "/a" and Transition("a", "", 0).key == "a/"
