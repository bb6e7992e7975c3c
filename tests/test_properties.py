"""Property tests: any arrival order within the out-of-orderness gives the same
outputs, and at the end of input every count is back to 0."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.apps.simulator import write_lines
from pipeline.main import run
from pipeline.rules.ledger import LEVEL, TRANSITION, IntervalSum, Ledger, advance_ledger
from pipeline.rules.observations import Observation
from pipeline.rules.player_state import PlayerTimeline
from pipeline.rules.snapshot_format import STATUS_OBJECT
from pipeline.testing.reference_model import model_snapshots

S = 1000
TIMEOUT_MS, UPDATE_MS, WINDOW_MS = 300 * S, 5 * S, 60 * S
T0 = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000


@st.composite
def streams(draw):
    """Observations of a few players (distinct times per player, so no ties), an
    arrival order, and a bound on how far arrival may lag behind event time."""
    levels = ["a", "b", "c", "d"]
    observations = []
    for player in range(draw(st.integers(1, 4))):
        times = draw(st.lists(st.integers(0, 1500), min_size=1, max_size=12, unique=True))
        for n, seconds in enumerate(times):
            level = draw(st.sampled_from(levels))
            observations.append(Observation(f"p{player}", level, T0 + seconds * S, f"p{player}-e{n}", 0))
            if draw(st.booleans()) and draw(st.booleans()):
                observations.append(observations[-1])  # a duplicate
    seed = draw(st.integers(0, 2**32 - 1))
    bound_ms = draw(st.sampled_from([0, 10 * S, 120 * S]))
    return observations, seed, bound_ms


def arrival_order(observations, seed, bound_ms):
    """Shuffle within the bound: each arrives at its time plus a delay below the bound."""
    rng = random.Random(seed)
    keyed = sorted((o.event_time_ms + rng.random() * bound_ms, i, o) for i, o in enumerate(observations))
    return [o for _, _, o in keyed]


def run_like_the_pipeline(arrivals, bound_ms, seed):
    """The tracker and the ledger, driven as the runner drives them: observations in
    arrival order, the watermark trailing the latest event time by the bound, timers
    firing in order when the watermark passes them."""
    rng = random.Random(seed + 1)
    timelines, pending, transitions, late = {}, {}, [], []
    watermark = T0 - 1

    def fire_until(limit):
        while True:
            due = [
                (tl.wake_at_ms(TIMEOUT_MS), p)
                for p, tl in timelines.items()
                if tl.wake_at_ms(TIMEOUT_MS) is not None
            ]
            due = [(t, p) for t, p in due if t <= limit]
            if not due:
                return
            wake, player = min(due)
            timeline, made, later = timelines[player].advance(pending[player], wake, TIMEOUT_MS)
            transitions.extend(made)
            timelines[player], pending[player] = timeline, later
            if timeline.is_done():
                del timelines[player], pending[player]

    latest = T0
    for observation in arrivals:
        timeline = timelines.get(observation.player, PlayerTimeline())
        if timeline.is_late(observation.event_time_ms):
            late.append(observation)
            continue
        timeline, item = timeline.accept(
            observation.event_time_ms, observation.level, (observation.event_id, 0)
        )
        timelines[observation.player] = timeline
        pending.setdefault(observation.player, []).append(item)
        latest = max(latest, observation.event_time_ms)
        if rng.random() < 0.3:  # the watermark advances now and then, never past the bound
            watermark = max(watermark, latest - bound_ms - 1)
            fire_until(watermark)
    fire_until(10**15)  # end of input: the watermark goes to infinity

    sums = {}
    for t in transitions:
        end = t.time_ms - t.time_ms % UPDATE_MS + UPDATE_MS
        for kind, key, delta in [(TRANSITION, t.key, 1), (LEVEL, t.from_level, -1), (LEVEL, t.to_level, 1)]:
            if key:
                sums[(kind, key, end)] = sums.get((kind, key, end), 0) + delta
    interval_sums = [IntervalSum(kind, key, end, n) for (kind, key, end), n in sums.items()]
    step = advance_ledger(Ledger(), interval_sums, 10**15, UPDATE_MS, WINDOW_MS)
    return step, late


def as_model(snapshots):
    return {s.window_end_ms: (dict(s.level_counts), dict(s.transition_counts)) for s in snapshots}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_any_arrival_order_within_the_bound_gives_the_model_snapshots(stream):
    observations, seed, bound_ms = stream
    step, late = run_like_the_pipeline(arrival_order(observations, seed, bound_ms), bound_ms, seed)
    assert late == []
    model = model_snapshots([tuple(o) for o in observations], TIMEOUT_MS // S, WINDOW_MS // S)
    assert as_model(step.snapshots) == model
    # After the end of input every level is back to 0: nobody is left anywhere.
    assert step.ledger.levels == ()
    final_levels = {}
    for update in step.updates:
        final_levels.update(dict(update.levels))
    assert all(n == 0 for n in final_levels.values())
    assert sum(n for _, n in step.snapshots[-1].level_counts) == 0


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(streams(), st.integers(0, 2**32 - 1))
def test_the_pipeline_writes_identical_snapshots_for_any_order_of_its_input(tmp_path_factory, stream, seed):
    observations, _, _ = stream
    from pipeline.testing.enriched_lines import enriched_line, level_context

    lines = [
        enriched_line(o.event_id, o.event_time_ms, [level_context(o.player, o.level)]).encode()
        for o in observations
    ]
    shuffled = list(lines)
    random.Random(seed).shuffle(shuffled)
    outputs = []
    for order in (lines, shuffled):
        root = tmp_path_factory.mktemp("run")
        write_lines(str(root / "events.tsv"), order)
        run([f"--input={root}/events.tsv", f"--snapshot_path={root}/out"])
        objects = {
            p.relative_to(root / "out").as_posix(): p.read_bytes() for p in (root / "out").rglob("*.json")
        }
        del objects[STATUS_OBJECT]  # about the run itself (its times), not the input
        outputs.append(objects)
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 2 + 2 * len(model_snapshots([tuple(o) for o in observations]))
