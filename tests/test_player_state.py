"""The player state machine, as plain functions: a player's level in event time
(docs/semantics.md, "A player's level" and "Transitions")."""

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


def test_the_same_event_id_at_another_level_or_time_is_not_a_duplicate():
    """Only an exact duplicate (same event, context, level and instant: a re-sent event)
    is skipped; the same id with anything else changed counts like any observation,
    ties in arrival order."""
    same_instant = [(10 * S, "a", ("e1", 0)), (10 * S, "b", ("e1", 0))]
    assert drive(same_instant, {})[0] == [("/a", 10), ("a/b", 10), ("b/", 310)]
    # Applied at 10 s first: the frontier holds e1 at 10 s only, not at 60 s.
    later = [(10 * S, "a", ("e1", 0)), (60 * S, "c", ("e1", 0))]
    assert drive(later, {1: [10 * S]})[0] == [("/a", 10), ("a/c", 60), ("c/", 360)]
    assert drive(later, {})[0] == [("/a", 10), ("a/c", 60), ("c/", 360)]


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


def test_transition_keys_use_empty_for_outside():
    assert Transition("", "a", 0).key == "/a" and Transition("a", "", 0).key == "a/"


def one_wake_per_instant(timeline, pending, until_ms):
    """What the tracker did before advance_through: a timer at each wake instant, one
    `advance` per firing."""
    transitions = []
    while (wake := timeline.wake_at_ms(TIMEOUT)) is not None and wake <= until_ms:
        timeline, made, pending = timeline.advance(pending, wake, TIMEOUT)
        transitions += made
    return timeline, transitions, sorted(pending, key=lambda p: (p.time_ms, p.seq))


def test_advancing_through_many_instants_at_once_equals_one_wake_per_instant():
    import random

    rng = random.Random(7)
    for _ in range(300):
        timeline, pending = PlayerTimeline(), []
        # Observations over 20 minutes, some at equal instants, some duplicated (even
        # of the previous instant, where the frontier matters), gaps beyond the timeout.
        times = sorted(rng.choice([0, 1, 1, 2, 5, 299, 300, 301, 700]) * S for _ in range(rng.randint(1, 12)))
        times = [sum(times[: i + 1]) for i in range(len(times))]
        arrivals = [(t, rng.choice("abc"), (f"e{i}", 0)) for i, t in enumerate(times)]
        arrivals += [rng.choice(arrivals) for _ in range(rng.randint(0, 3))]
        rng.shuffle(arrivals)
        split = rng.randint(0, len(arrivals))
        # A first batch, a watermark at a random instant, then the rest and the end.
        for batch, until in ((arrivals[:split], rng.choice(times)), (arrivals[split:], 10**12)):
            for time_ms, level, observation_id in batch:
                if not timeline.is_late(time_ms):
                    timeline, item = timeline.accept(time_ms, level, observation_id)
                    pending.append(item)
            expected = one_wake_per_instant(timeline, pending, until)
            timeline, made, pending = timeline.advance_through(pending, until, TIMEOUT)
            assert (timeline, made, pending) == expected
