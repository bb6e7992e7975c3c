"""The ledger of counts: every level's players and every transition's total, closed
one `update` instant at a time. Plain Python, no Beam.

Everything the pipeline writes comes from here, from `IntervalSum`s: for one key, the
sum of its deltas over one update interval [end - update, end). A key is a level
(deltas -1/+1) or a transition "from/to" (+1 each). Closing instant t applies the
sums of the interval ending at t, so the ledger then holds players(L, t) for every L
and the transitions before t:

- a `CounterUpdate` per instant with the keys whose value changed (for DynamoDB);
  `coalesce_updates` folds those of one step into each key's latest value,
- a `Snapshot` per window end (for S3), quiet windows included,
- a `Checkpoint` at the latest window end a step closes: the whole ledger, from which
  a restarted pipeline resumes without counting anything twice (written last, once
  everything up to its instant is published: see pipeline.sinks.commit).

Sizes: a campaign has hundreds to a thousand levels and transition pairs only
accumulate (tens of thousands). So a step costs the keys it changes plus one copy of
the transition totals, never a sort or a copy of them per instant or per window: they
are kept in a mapping, and a step that closes many windows (a backlog) checkpoints
only the last of them (a restart needs only the newest; the commit keeps only the
newest anyway).
"""

from typing import Iterable, Iterator, Mapping, NamedTuple

from pipeline.rules.snapshot_format import Snapshot

LEVEL = "level"
TRANSITION = "transition"


class IntervalSum(NamedTuple):
    kind: str  # LEVEL or TRANSITION
    key: str  # a level slug, or a transition "from/to"
    interval_end_ms: int
    total: int


class Checkpoint(NamedTuple):
    as_of_ms: int  # a window end: everything before it is in here
    levels: Mapping[str, int]  # players(L, as_of) for every L with players
    transition_totals: Mapping[str, int]  # transitions before as_of, since the first run


class CounterUpdate(NamedTuple):
    """The absolute values, as of `as_of_ms`, of keys whose latest change was at that instant."""

    as_of_ms: int
    levels: tuple[tuple[str, int], ...]  # players(L, as_of); 0 when the level emptied
    transition_totals: tuple[tuple[str, int], ...]  # transitions before as_of, since the first run


class Ledger(NamedTuple):
    """The ledger between steps. The levels with players (at most the campaign's levels)
    and the open window's transitions are small: sorted pairs. Every transition pair ever
    seen is not: a mapping, never changed in place (a step builds a new one), so a Ledger
    can be shared; sorted pairs, as an earlier version stored them, are read too."""

    levels: tuple[tuple[str, int], ...] = ()  # non-zero counts only
    transition_totals: Mapping[str, int] = {}
    window_transitions: tuple[tuple[str, int], ...] = ()  # the open window's so far
    next_instant_ms: int | None = None  # the next instant to close; None before any event
    last_change_ms: int | None = None  # the latest instant that applied a sum

    @classmethod
    def resume_from(cls, checkpoint: Checkpoint, update_ms: int) -> "Ledger":
        return cls(
            tuple(sorted(checkpoint.levels.items())),
            dict(checkpoint.transition_totals),
            (),
            checkpoint.as_of_ms + update_ms,
            # Not known; the checkpoint's instant is a bound the staleness rule can use
            # (None would never let a drifted count stop the ledger at the end of input).
            checkpoint.as_of_ms,
        )

    def is_active(self) -> bool:
        """Players in the game, or a window with transitions still open."""
        return bool(self.levels or self.window_transitions)


class LedgerStep(NamedTuple):
    ledger: Ledger
    updates: list[CounterUpdate]  # one per instant that changed a value, in order
    snapshots: list[Snapshot]  # one per window end closed, in order
    checkpoints: list[Checkpoint]  # at most one: the latest window end closed
    later: list[IntervalSum]  # sums of instants not closed yet
    already_applied: list[IntervalSum]  # sums of instants closed before (a replay)


class _Closing:
    """The working copy of a ledger during one step: closes instants one at a time, and
    remembers what it changed since the latest window end, so the ledger as of then
    (the step's checkpoint) is one copy at the end, not one per window."""

    def __init__(self, ledger: Ledger, due: dict, update_ms: int, window_ms: int):
        self.levels = dict(ledger.levels)
        self.totals = dict(ledger.transition_totals)
        self.in_window = dict(ledger.window_transitions)
        self.last_change = ledger.last_change_ms
        self.due = due
        self.update_ms = update_ms
        self.window_ms = window_ms
        self.updates: list[CounterUpdate] = []
        self.snapshots: list[Snapshot] = []
        self.window_end: int | None = None  # the latest window end closed
        self.levels_then: dict[str, int] = {}  # key -> its value at that window end (0: absent)
        self.totals_then: dict[str, int] = {}

    def close(self, instant: int) -> None:
        levels, totals, in_window = self.levels, self.totals, self.in_window
        changed_levels, changed_totals = {}, {}
        sums = self.due.pop(instant, ())
        if sums:
            self.last_change = instant
        for s in sums:
            if s.kind == LEVEL:
                if s.total:
                    before = levels.get(s.key, 0)
                    self.levels_then.setdefault(s.key, before)
                    n = changed_levels[s.key] = before + s.total
                    if n:
                        levels[s.key] = n
                    else:
                        del levels[s.key]
            else:
                before = totals.get(s.key, 0)
                self.totals_then.setdefault(s.key, before)
                changed_totals[s.key] = totals[s.key] = before + s.total
                in_window[s.key] = in_window.get(s.key, 0) + s.total
        if changed_levels or changed_totals:
            self.updates.append(
                CounterUpdate(
                    instant, tuple(sorted(changed_levels.items())), tuple(sorted(changed_totals.items()))
                )
            )
        if instant % self.window_ms == 0:  # a window end
            self.snapshots.append(
                Snapshot(
                    instant - self.window_ms,
                    instant,
                    tuple(sorted((k, n) for k, n in levels.items() if n > 0)),
                    tuple(sorted((k, n) for k, n in in_window.items() if n > 0)),
                )
            )
            in_window.clear()
            self.window_end = instant
            self.levels_then.clear()
            self.totals_then.clear()

    def checkpoint(self) -> Checkpoint | None:
        """The ledger as of the latest window end closed, if any."""
        if self.window_end is None:
            return None
        levels, totals = dict(self.levels), dict(self.totals)
        for current, then in ((levels, self.levels_then), (totals, self.totals_then)):
            for key, n in then.items():
                if n:
                    current[key] = n
                else:
                    current.pop(key, None)
        return Checkpoint(self.window_end, levels, totals)


def advance_ledger(
    ledger: Ledger, sums: Iterable[IntervalSum], until_ms: int, update_ms: int, window_ms: int
) -> LedgerStep:
    """Close every instant up to `until_ms` (the watermark has passed it)."""
    sums = list(sums)
    next_instant = ledger.next_instant_ms
    if next_instant is None:
        if not sums:
            return LedgerStep(ledger, [], [], [], [], [])
        next_instant = min(s.interval_end_ms for s in sums)
    already = [s for s in sums if s.interval_end_ms < next_instant]
    later = [s for s in sums if s.interval_end_ms > until_ms]
    due: dict[int, list[IntervalSum]] = {}
    for s in sums:
        if next_instant <= s.interval_end_ms <= until_ms:
            due.setdefault(s.interval_end_ms, []).append(s)

    closing = _Closing(ledger, due, update_ms, window_ms)
    instant = next_instant
    while instant <= until_ms:
        if not closing.levels and not closing.in_window and not due:
            break  # quiet: the next event's instant picks up from here, filling the gap
        closing.close(instant)
        instant += update_ms
    checkpoint = closing.checkpoint()
    new_ledger = Ledger(
        tuple(sorted(closing.levels.items())),
        closing.totals,
        tuple(sorted(closing.in_window.items())),
        instant,
        closing.last_change,
    )
    return LedgerStep(
        new_ledger, closing.updates, closing.snapshots, [checkpoint] if checkpoint else [], later, already
    )


def close_everything(
    ledger: Ledger,
    sums: Iterable[IntervalSum],
    update_ms: int,
    window_ms: int,
    stale_after_ms: int | None = None,
) -> Iterator[LedgerStep]:
    """The steps a stream's ledger takes once its input has ended and the watermark is
    at +infinity: it wakes at `next_wake_ms` again and again (every instant is passed)
    until it is quiet, or stale. For a bounded input, whose sums are all known."""
    pending = list(sums)
    wake_ms = next_wake_ms(ledger, pending, window_ms, stale_after_ms)
    while wake_ms is not None:
        step = advance_ledger(ledger, pending, wake_ms, update_ms, window_ms)
        yield step
        ledger, pending = step.ledger, step.later
        wake_ms = next_wake_ms(ledger, pending, window_ms, stale_after_ms)


def coalesce_updates(updates: Iterable[CounterUpdate]) -> list[CounterUpdate]:
    """The CounterUpdates of one step, each key once: its latest value, as of the
    instant of its last change in the step; one CounterUpdate per such instant, in
    order.

    What a reader of the tables sees stays what the contract allows when several
    update instants become final at once: every value is as of an instant on the
    update grid (the one it carries), and the latest of the step for its key. Live,
    one instant per step, this changes nothing. Each value keeps the asOf of its own
    last change (not the step's end), so the writes' order against the checkpoint
    barrier is argued per key in pipeline.sinks.dynamodb."""
    levels: dict[str, tuple[int, int]] = {}
    totals: dict[str, tuple[int, int]] = {}
    for update in updates:
        for key, n in update.levels:
            levels[key] = (update.as_of_ms, n)
        for key, n in update.transition_totals:
            totals[key] = (update.as_of_ms, n)
    by_instant: dict[int, tuple[list, list]] = {}
    for key, (as_of, n) in levels.items():
        by_instant.setdefault(as_of, ([], []))[0].append((key, n))
    for key, (as_of, n) in totals.items():
        by_instant.setdefault(as_of, ([], []))[1].append((key, n))
    return [
        CounterUpdate(as_of, tuple(sorted(changed_levels)), tuple(sorted(changed_totals)))
        for as_of, (changed_levels, changed_totals) in sorted(by_instant.items())
    ]


def values_in(updates: Iterable[CounterUpdate]) -> int:
    """How many key values the updates carry: one UpdateItem each."""
    return sum(len(u.levels) + len(u.transition_totals) for u in updates)


def is_stale(ledger: Ledger, stale_after_ms: int | None) -> bool:
    """Once the input has ended (only then: while it runs, a player who keeps sending
    the level they are in stays there with no transition at all): players still
    counted, yet no transition for longer than any player can stay without one once no
    observation comes (the timeout, plus a window), a count that can never come back
    to 0. The contract makes this impossible; if it happens anyway, waking at every
    window end would go on until the end of time."""
    return (
        stale_after_ms is not None
        and ledger.last_change_ms is not None
        and ledger.next_instant_ms is not None
        and ledger.next_instant_ms - ledger.last_change_ms > stale_after_ms
    )


def wake_for_sum_ms(next_instant_ms: int | None, interval_end_ms: int) -> int:
    """When to close for a sum that just arrived: at its instant, or at the ledger's
    next instant if that is later (a sum of an instant closed before is then set aside
    as already applied). Needs only the ledger's next instant, not the ledger."""
    return interval_end_ms if next_instant_ms is None else max(interval_end_ms, next_instant_ms)


def next_wake_ms(
    ledger: Ledger, pending: Iterable[IntervalSum], window_ms: int, stale_after_ms: int | None = None
) -> int | None:
    """The instant at which to close next: the latest pending sum's, or with nothing
    pending the next window end while active (a snapshot is due even if nothing
    changes); None when quiet and idle.

    The instants before it close then too, in order (closing in one step or several
    gives the same), so a bounded input, whose sums all arrive before the watermark
    moves, is closed in one step instead of one per update instant. In a stream,
    sums arrive once the watermark has passed their instant, so this is no later.
    Waking earlier is never wrong either: what is not due yet stays pending."""
    ends = [s.interval_end_ms for s in pending]
    if ends:
        return wake_for_sum_ms(ledger.next_instant_ms, max(ends))
    if is_stale(ledger, stale_after_ms):
        return None
    if ledger.next_instant_ms is not None and ledger.is_active():
        wake_ms = -(-ledger.next_instant_ms // window_ms) * window_ms
        return max(wake_ms, ledger.next_instant_ms)
    return None
