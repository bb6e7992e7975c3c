"""Changes to measure before anyone makes them: each one patches Beam or the pipeline in
a bench child's process only (bench.child's "experiments"), so its effect is measured
beside the unchanged pipeline in the same bench run. None of them is in the product.

- pipeline_state_commits: Beam's SDK harness waits, at the end of each bundle, for
  every state cell's writes one cell after another; this sends them all, then waits.
- cache_user_state: let the SDK harness cache user state across bundles on Prism,
  which gives no cache token (with --max_cache_memory_usage_mb).
- flink_state_cache: turn on the SDK harness's state cache (--max_cache_memory_usage_mb,
  off by default in Beam): Flink gives cache tokens, so state read once stays cached.
- one_state_cell: TrackPlayers keeps a player's timeline and pending observations in
  one state cell instead of two (one read and one write per player and bundle instead
  of up to two of each), same rules (pipeline.rules.player_state), same outputs.
"""

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue

from pipeline.rules.observations import LATE, DeadLetter
from pipeline.rules.player_state import PlayerTimeline
from pipeline.runtime import metrics
from pipeline.runtime.beam_patches import size_state_cheaply
from pipeline.runtime.timestamps import ms_to_timestamp, timestamp_to_ms


def cache_user_state():
    """Experiment: lets the SDK harness cache user state across bundles when the runner
    gives no cache token (Prism gives none). Only sound with one SDK worker that owns
    every key and a runner that fails the job rather than retrying a bundle: Prism."""
    from apache_beam.portability.api import beam_fn_api_pb2
    from apache_beam.runners.worker import sdk_worker

    handler = sdk_worker.GlobalCachingStateHandler
    original = handler.process_instruction_id

    def process_instruction_id(self, bundle_id, cache_tokens):
        tokens = list(cache_tokens)
        if not any(t.HasField("user_state") for t in tokens):
            tokens.append(
                beam_fn_api_pb2.ProcessBundleRequest.CacheToken(
                    user_state=beam_fn_api_pb2.ProcessBundleRequest.CacheToken.UserState(),
                    token=b"one-worker",
                )
            )
        return original(self, bundle_id, tokens)

    handler.process_instruction_id = process_instruction_id


def pipeline_state_commits():
    """Experiment: at the end of a bundle, send every state cell's writes first and then
    wait for all of them, instead of waiting for each cell's before sending the next
    (Beam's FnApiUserStateContext.commit). The order of requests per cell is unchanged
    (one stream, in order); only the waiting moves to the end."""
    from apache_beam.runners.worker import bundle_processor

    def commit(self):
        waits = []
        for state in self._all_states.values():
            bag = getattr(state, "_underlying_bag_state", state)
            if type(bag) is not bundle_processor.SynchronousBagRuntimeState:
                state.commit()
                continue
            future = None
            if bag._cleared:
                future = bag._state_handler.clear(bag._state_key)
            if bag._added_elements:
                future = bag._state_handler.extend(
                    bag._state_key, bag._value_coder.get_impl(), bag._added_elements
                )
            if future is not None:
                waits.append(future)
        for future in waits:
            future.get()

    bundle_processor.FnApiUserStateContext.commit = commit


class OneCellTrackPlayerFn(beam.DoFn):
    """pipeline.transforms.track_players._TrackPlayerFn with one state cell:
    (PlayerTimeline, tuple of Pending)."""

    PLAYER = ReadModifyWriteStateSpec("player", PickleCoder())
    WAKE = TimerSpec("wake", TimeDomain.WATERMARK)

    def __init__(self, timeout_ms: int):
        self._timeout_ms = timeout_ms
        self._transitions = metrics.counter("transitions")
        self._late = metrics.counter("late_observations")
        self._timeouts = metrics.counter("player_timeouts")

    def setup(self):
        size_state_cheaply()

    def process(self, element, player=beam.DoFn.StateParam(PLAYER), wake=beam.DoFn.TimerParam(WAKE)):
        from pipeline.transforms.track_players import TrackPlayerLevels

        _, observation = element
        timeline, pending = player.read() or (PlayerTimeline(), ())
        if timeline.is_late(observation.event_time_ms):
            self._late.inc()
            yield pvalue.TaggedOutput(
                TrackPlayerLevels.LATE,
                DeadLetter(
                    LATE,
                    f"observation at {observation.event_time_ms} ms is before this player's "
                    f"applied frontier {timeline.applied_until_ms} ms",
                    "",
                    repr(observation),
                    observation.event_time_ms,
                ),
            )
            return
        wake_before = timeline.wake_at_ms(self._timeout_ms)
        timeline, item = timeline.accept(
            observation.event_time_ms, observation.level, (observation.event_id, observation.index)
        )
        player.write((timeline, (*pending, item)))
        wake_ms = timeline.wake_at_ms(self._timeout_ms)
        if wake_ms != wake_before:
            wake.set(ms_to_timestamp(wake_ms))

    @on_timer(WAKE)
    def on_wake(
        self,
        fired_at=beam.DoFn.TimestampParam,
        player=beam.DoFn.StateParam(PLAYER),
        wake=beam.DoFn.TimerParam(WAKE),
    ):
        timeline, pending = player.read() or (PlayerTimeline(), ())
        timeline, transitions, later = timeline.advance(
            list(pending), timestamp_to_ms(fired_at), self._timeout_ms
        )
        for transition in transitions:
            self._transitions.inc()
            if not transition.to_level:
                self._timeouts.inc()
            yield TimestampedValue(transition, ms_to_timestamp(transition.time_ms))
        if timeline.is_done():
            player.clear()
            return
        player.write((timeline, tuple(later)))
        wake.set(ms_to_timestamp(timeline.wake_at_ms(self._timeout_ms)))


def one_state_cell():
    from pipeline.transforms import track_players

    track_players._TrackPlayerFn = OneCellTrackPlayerFn


def gil_switch_1ms():
    """The interpreter hands the GIL over every 1 ms instead of 5 ms, so the harness's
    state, data and control threads are not kept waiting behind a busy DoFn thread."""
    import sys

    sys.setswitchinterval(0.001)


def gil_switch_0_2ms():
    import sys

    sys.setswitchinterval(0.0002)


EXPERIMENTS = {
    "gil_switch_1ms": gil_switch_1ms,
    "gil_switch_0_2ms": gil_switch_0_2ms,
    "one_state_cell": one_state_cell,
    "cache_user_state": cache_user_state,
    "pipeline_state_commits": pipeline_state_commits,
}


# Experiments that are pipeline flags rather than patches.
FLAGS = {"flink_state_cache": ["--max_cache_memory_usage_mb=256"]}


def flags(names) -> list:
    return [flag for name in names for flag in FLAGS.get(name, [])]


def patches(names) -> list:
    return [name for name in names if name not in FLAGS]


def apply(name: str):
    EXPERIMENTS[name]()
