"""TrackPlayerLevels: each player's observations -> their level transitions, in event time."""

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.worker.statecache import CacheAware
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.typehints import KV, Tuple

from pipeline.rules.observations import LATE, DeadLetter, Observation
from pipeline.rules.player_state import PlayerTimeline, replay_all
from pipeline.runtime import metrics
from pipeline.runtime.beam_patches import tune_sdk_worker
from pipeline.runtime.timestamps import ms_to_timestamp, timestamp_to_ms


class _StoredPlayer(CacheAware):
    """A player's state cell: the timeline and its pending observations. A state cache
    weighs every value it holds by walking its objects (a tenth of the stream's CPU,
    profiled); this gives it an estimate of their size in memory instead."""

    TIMELINE_BYTES = 700
    PENDING_BYTES = 350

    def __init__(self, timeline: PlayerTimeline, pending: tuple):
        super().__init__()
        self.timeline = timeline
        self.pending = pending

    def get_referents_for_cache(self) -> list:
        return []

    def __sizeof__(self) -> int:
        return self.TIMELINE_BYTES + self.PENDING_BYTES * len(self.pending)

    def __reduce__(self):  # pickled as its two parts, without an attribute dictionary
        return _StoredPlayer, (self.timeline, self.pending)


def _read_player(player_state) -> tuple:
    stored = player_state.read()
    return (PlayerTimeline(), ()) if stored is None else (stored.timeline, stored.pending)


class _TrackPlayerFn(beam.DoFn):
    """Keyed by player. Buffers observations and applies them in event-time order
    when the watermark passes them, so arrival order never matters.

    Two event-time timers. WAKE is at the earliest instant the player needs looking
    at (their earliest pending observation or their timeout): its hold keeps the
    output watermark at or before every transition still to be emitted, so
    transitions are never late downstream. LAST is at their latest pending
    observation, set only while it is later than WAKE: when the watermark has passed
    it too (a backlog read faster than the watermark moved), that one wake applies
    every pending instant, instead of one wake, state write and timer per instant in
    turn (`PlayerTimeline.advance_through` gives exactly what those wakes give).
    Either timer applies every instant up to its own time; the other then finds
    nothing due and does nothing.

    An observation earlier than what was already applied is late: dead-lettered,
    never applied. State is cleared when the player has left and nothing is pending.
    """

    # One cell per player (_StoredPlayer: the timeline and its pending observations):
    # one read and one write per player and bundle; two cells cost twice the state calls,
    # and state calls are what a stream's throughput is spent on (README "Performance").
    PLAYER = ReadModifyWriteStateSpec("player", PickleCoder())
    WAKE = TimerSpec("wake", TimeDomain.WATERMARK)
    LAST = TimerSpec("last", TimeDomain.WATERMARK)

    def __init__(self, timeout_ms: int):
        self._timeout_ms = timeout_ms
        self._transitions = metrics.counter("transitions")
        self._late = metrics.counter("late_observations")
        self._timeouts = metrics.counter("player_timeouts")
        self._wakes = metrics.counter("player_wakes")

    def setup(self):
        tune_sdk_worker()

    def process(
        self,
        element,
        player_state=beam.DoFn.StateParam(PLAYER),
        wake=beam.DoFn.TimerParam(WAKE),
        last=beam.DoFn.TimerParam(LAST),
    ):
        _, observation = element
        timeline, pending = _read_player(player_state)
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
        last_before = _latest(pending)
        timeline, item = timeline.accept(
            observation.event_time_ms, observation.level, (observation.event_id, observation.index)
        )
        player_state.write(_StoredPlayer(timeline, (*pending, item)))
        # Move a timer only when this observation changes it (each set is a write to the runner).
        wake_ms = timeline.wake_at_ms(self._timeout_ms)
        if wake_ms != wake_before:
            wake.set(ms_to_timestamp(wake_ms))
        last_ms = max(last_before, item.time_ms) if last_before is not None else item.time_ms
        last_was_set = last_before is not None and last_before > wake_before
        if last_ms > wake_ms and (last_ms != last_before or not last_was_set):
            last.set(ms_to_timestamp(last_ms))

    @on_timer(WAKE)
    def on_wake(
        self,
        fired_at=beam.DoFn.TimestampParam,
        player_state=beam.DoFn.StateParam(PLAYER),
        wake=beam.DoFn.TimerParam(WAKE),
        last=beam.DoFn.TimerParam(LAST),
    ):
        # LAST, if set, stays right: applying the earliest instants leaves the latest pending.
        yield from self._advance(fired_at, player_state, wake, last, last_fired=False)

    @on_timer(LAST)
    def on_last(
        self,
        fired_at=beam.DoFn.TimestampParam,
        player_state=beam.DoFn.StateParam(PLAYER),
        wake=beam.DoFn.TimerParam(WAKE),
        last=beam.DoFn.TimerParam(LAST),
    ):
        yield from self._advance(fired_at, player_state, wake, last, last_fired=True)

    def _advance(self, fired_at, player_state, wake, last, last_fired: bool):
        stored = player_state.read()
        if stored is None:
            return  # the player left: a timer set before that has nothing to do
        timeline, pending = stored.timeline, stored.pending
        fired_ms = timestamp_to_ms(fired_at)
        due_ms = timeline.wake_at_ms(self._timeout_ms)
        if due_ms is None or due_ms > fired_ms:
            return  # the other timer already applied everything up to here
        self._wakes.inc()
        timeline, transitions, later = timeline.advance_through(pending, fired_ms, self._timeout_ms)
        for transition in transitions:
            self._transitions.inc()
            if not transition.to_level:
                self._timeouts.inc()
            yield TimestampedValue(transition, ms_to_timestamp(transition.time_ms))
        if timeline.is_done():
            player_state.clear()  # the player left: nothing of them stays
            return
        player_state.write(_StoredPlayer(timeline, tuple(later)))
        wake_ms = timeline.wake_at_ms(self._timeout_ms)
        wake.set(ms_to_timestamp(wake_ms))
        if last_fired and later and later[-1].time_ms > wake_ms:
            last.set(ms_to_timestamp(later[-1].time_ms))


def _latest(pending) -> int | None:
    return max((p.time_ms for p in pending), default=None)


class _ReplayPlayerFn(beam.DoFn):
    """Bounded input: one player's observations at once, after a GroupByKey, through
    the same rules as `_TrackPlayerFn` (`replay_all` is `PlayerTimeline` advanced to
    each of its wake instants in turn). On a bounded input the watermark only moves,
    to +infinity, once the input has ended, so every observation has arrived before
    any is applied and none can be late; grouping gives the same transitions without
    a state write or a timer firing per observation."""

    def __init__(self, timeout_ms: int):
        self._timeout_ms = timeout_ms
        self._transitions = metrics.counter("transitions")
        self._timeouts = metrics.counter("player_timeouts")

    def process(self, element):
        _, arrivals = element
        transitions = replay_all(arrivals, self._timeout_ms)
        self._transitions.inc(len(transitions))
        self._timeouts.inc(sum(1 for t in transitions if not t.to_level))
        for transition in transitions:
            yield TimestampedValue(transition, ms_to_timestamp(transition.time_ms))


# What the bounded path shuffles per observation: (time_ms, level, (event_id, index)),
# a plain tuple so Beam's fast primitive coder encodes it.
Arrival = Tuple[int, str, Tuple[str, int]]


def _arrival(observation: Observation):
    return observation.player, (
        observation.event_time_ms,
        observation.level,
        (observation.event_id, observation.index),
    )


class TrackPlayerLevels(beam.PTransform):
    """Observation -> Transition, each timestamped with its own event time, plus a
    LATE output of DeadLetter for observations that came too late to apply.

    Streaming (or any unbounded input): a stateful DoFn per player with an event-time
    timer. Bounded input in batch mode: a GroupByKey per player and the same state
    machine run once over each player's observations (never late there)."""

    TRANSITIONS = "transitions"
    LATE = "late"

    def __init__(self, timeout_secs: int):
        super().__init__()
        self._timeout_ms = int(timeout_secs * 1000)

    def expand(self, observations):
        streaming = observations.pipeline.options.view_as(StandardOptions).streaming
        if observations.is_bounded and not streaming:
            return (
                observations
                | "ToArrivals" >> beam.Map(_arrival).with_output_types(KV[str, Arrival])
                # (player, (time_ms, level, (event_id, index)))
                | "GroupByPlayer" >> beam.GroupByKey()
                | "ReplayPlayers"
                >> beam.ParDo(_ReplayPlayerFn(self._timeout_ms)).with_outputs(
                    self.LATE, main=self.TRANSITIONS
                )
            )
        return (
            observations
            | "KeyByPlayer" >> beam.Map(lambda o: (o.player, o)).with_output_types(KV[str, Observation])
            # (player, Observation)
            | "TrackLevels"
            >> beam.ParDo(_TrackPlayerFn(self._timeout_ms)).with_outputs(self.LATE, main=self.TRANSITIONS)
        )
