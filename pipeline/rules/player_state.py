"""The player state machine of docs/semantics.md ("A player's level"), in event time. Plain Python, no Beam.

A player is in level L from an observation of L until the next observation of a
different level, or until `last_seen + timeout`, whichever comes first. Each change
is a `Transition` at its own event time; "" stands for outside the game.

`PlayerTimeline` adds what a streaming runner needs on top: observations arrive out
of order, so they are buffered and applied in event-time order only up to an instant
the watermark has passed (`advance`), and anything earlier than what was already
applied is refused as late instead of being applied half-way.
"""

from typing import Iterable, NamedTuple

OUTSIDE = ""


class Transition(NamedTuple):
    from_level: str
    to_level: str
    time_ms: int

    @property
    def key(self) -> str:
        """The original app's key, "from/to", with "" for outside the game."""
        return f"{self.from_level}/{self.to_level}"


class PlayerLevel(NamedTuple):
    level: str
    last_seen_ms: int

    def deadline_ms(self, timeout_ms: int) -> int:
        return self.last_seen_ms + timeout_ms


def observe(
    current: PlayerLevel | None, level: str, time_ms: int, timeout_ms: int
) -> tuple[PlayerLevel, list[Transition]]:
    """Apply one observation (observations must come in event-time order)."""
    transitions = []
    if current is not None and time_ms >= current.deadline_ms(timeout_ms):
        # Timed out before this observation: the exit comes first.
        transitions.append(Transition(current.level, OUTSIDE, current.deadline_ms(timeout_ms)))
        current = None
    if current is None:
        transitions.append(Transition(OUTSIDE, level, time_ms))
    elif current.level != level:
        transitions.append(Transition(current.level, level, time_ms))
    return PlayerLevel(level, time_ms), transitions


def expire(
    current: PlayerLevel | None, until_ms: int, timeout_ms: int
) -> tuple[PlayerLevel | None, list[Transition]]:
    """Time the player out if `last_seen + timeout <= until_ms`."""
    if current is not None and current.deadline_ms(timeout_ms) <= until_ms:
        return None, [Transition(current.level, OUTSIDE, current.deadline_ms(timeout_ms))]
    return current, []


def transitions_of(observations: Iterable[tuple[int, str]], timeout_ms: int) -> list[Transition]:
    """Every transition of one player whose (time_ms, level) observations are in order,
    including the final timeout (the end of input)."""
    current, transitions = None, []
    for time_ms, level in observations:
        current, made = observe(current, level, time_ms, timeout_ms)
        transitions += made
    if current is not None:
        transitions.append(Transition(current.level, OUTSIDE, current.deadline_ms(timeout_ms)))
    return transitions


class Pending(NamedTuple):
    """A buffered observation; `seq` keeps arrival order among equal times."""

    time_ms: int
    seq: int
    level: str
    observation_id: tuple[str, int]  # (event_id, index of the context in the event)

    def duplicate_key(self) -> tuple:
        """An exact duplicate has all of these equal: a re-sent event. The same event id
        at another time or with another level is not one; it counts like any other."""
        return (self.time_ms, self.observation_id, self.level)


class PlayerTimeline(NamedTuple):
    """What the tracker keeps per player besides its buffer of pending observations.

    applied_until_ms: every observation at or before this instant has been applied;
      an observation earlier than it is late. None before anything was applied.
    frontier_ids: the duplicate keys (Pending.duplicate_key) of the observations applied
      exactly at applied_until_ms, so an exact duplicate arriving at that same instant
      is recognised.
    earliest_pending_ms: the earliest buffered observation, None if none.
    """

    current: PlayerLevel | None = None
    applied_until_ms: int | None = None
    frontier_ids: frozenset = frozenset()
    next_seq: int = 0
    earliest_pending_ms: int | None = None

    def is_late(self, time_ms: int) -> bool:
        return self.applied_until_ms is not None and time_ms < self.applied_until_ms

    def accept(self, time_ms: int, level: str, observation_id) -> tuple["PlayerTimeline", Pending]:
        """Number an incoming (not late) observation for the buffer."""
        earliest = time_ms if self.earliest_pending_ms is None else min(self.earliest_pending_ms, time_ms)
        return self._replace(next_seq=self.next_seq + 1, earliest_pending_ms=earliest), Pending(
            time_ms, self.next_seq, level, observation_id
        )

    def advance(
        self, pending: Iterable[Pending], until_ms: int, timeout_ms: int
    ) -> tuple["PlayerTimeline", list[Transition], list[Pending]]:
        """Apply, in event-time order, every pending observation at or before `until_ms`
        and a timeout due by then. Returns the new timeline, the transitions, and the
        observations still pending (later than `until_ms`)."""
        due = sorted((p for p in pending if p.time_ms <= until_ms), key=lambda p: (p.time_ms, p.seq))
        later = [p for p in pending if p.time_ms > until_ms]
        current, transitions = self.current, []
        # An exact duplicate of an applied observation can only be at applied_until_ms
        # (anything earlier is refused as late), so the frontier's keys suffice.
        seen = set(self.frontier_ids)
        frontier = set(self.frontier_ids) if self.applied_until_ms == until_ms else set()
        for p in due:
            key = p.duplicate_key()
            if key in seen:
                continue  # an exact duplicate of an observation already applied
            seen.add(key)
            if p.time_ms == until_ms:
                frontier.add(key)
            current, made = observe(current, p.level, p.time_ms, timeout_ms)
            transitions += made
        current, made = expire(current, until_ms, timeout_ms)
        transitions += made
        earliest = min((p.time_ms for p in later), default=None)
        timeline = PlayerTimeline(current, until_ms, frozenset(frontier), self.next_seq, earliest)
        return timeline, transitions, later

    def advance_through(
        self, pending: Iterable[Pending], until_ms: int, timeout_ms: int
    ) -> tuple["PlayerTimeline", list[Transition], list[Pending]]:
        """`advance` to each instant this timeline wakes at, up to `until_ms`, in turn:
        exactly what one wake per instant gives, in one call. A tracker whose input
        watermark has passed many of a player's instants (a backlog) applies them all
        at one wake instead of one wake, one state write and one timer per instant.
        Returns the new timeline, the transitions, and the observations still pending
        (in event-time order)."""
        ordered = sorted(pending, key=lambda p: (p.time_ms, p.seq))
        timeline, transitions, first = self, [], 0
        while (wake := timeline.wake_at_ms(timeout_ms)) is not None and wake <= until_ms:
            after = first
            while after < len(ordered) and ordered[after].time_ms <= wake:
                after += 1
            timeline, made, _ = timeline.advance(ordered[first:after], wake, timeout_ms)
            first = after
            later = ordered[first].time_ms if first < len(ordered) else None
            timeline = timeline._replace(earliest_pending_ms=later)
            transitions += made
        return timeline, transitions, ordered[first:]

    def is_done(self) -> bool:
        """The player has left and nothing of theirs is pending: forget them."""
        return self.current is None and self.earliest_pending_ms is None

    def wake_at_ms(self, timeout_ms: int) -> int | None:
        """When the tracker must next look at this player: its earliest pending
        observation or its timeout, whichever comes first; None if neither."""
        candidates = [] if self.earliest_pending_ms is None else [self.earliest_pending_ms]
        if self.current is not None:
            candidates.append(self.current.deadline_ms(timeout_ms))
        return min(candidates) if candidates else None


def replay_all(arrivals: Iterable[tuple[int, str, tuple]], timeout_ms: int) -> list[Transition]:
    """Every transition of one player whose observations, (time_ms, level,
    observation_id) in arrival order, all arrived before any was applied, as on a
    bounded input, where the watermark only moves, to +infinity, once the input ends.

    Gives exactly what a `PlayerTimeline` gives when it accepts them all and is then
    advanced to each instant its timer wakes at in turn (its earliest pending
    observation or its timeout), until it is done, but with one sort instead of one
    pass over the buffer per instant. Exact duplicates are recognised as `advance`
    does: the same observation id and level at the same instant.
    """
    ordered = sorted(arrivals, key=lambda arrival: arrival[0])  # stable: ties keep arrival order
    current, transitions = None, []
    i = 0
    while i < len(ordered) or current is not None:
        next_time = ordered[i][0] if i < len(ordered) else None
        deadline = None if current is None else current.deadline_ms(timeout_ms)
        until = (
            next_time if deadline is None or (next_time is not None and next_time < deadline) else deadline
        )
        seen = set()  # (observation id, level) applied at this instant
        while i < len(ordered) and ordered[i][0] == until:
            time_ms, level, observation_id = ordered[i]
            i += 1
            if (observation_id, level) in seen:
                continue  # an exact duplicate of an observation already applied
            seen.add((observation_id, level))
            current, made = observe(current, level, time_ms, timeout_ms)
            transitions += made
        current, made = expire(current, until, timeout_ms)
        transitions += made
    return transitions
