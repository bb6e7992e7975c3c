"""The ledger of counts: every level's players and every transition's total, closed
one `update` instant at a time. Plain Python, no Beam.

Everything the pipeline writes comes from here, from `IntervalSum`s: for one key, the
sum of its deltas over one update interval [end - update, end). A key is a level
(deltas -1/+1) or a transition "from/to" (+1 each). Closing instant t applies the
sums of the interval ending at t, so the ledger then holds players(L, t) for every L
and the transitions before t:

- a `CounterUpdate` per instant with the keys whose value changed (for DynamoDB),
- a `Snapshot` per window end (for S3), quiet windows included,
- a `Checkpoint` per window end: the whole ledger, from which a restarted pipeline
  resumes without counting anything twice (written last, once everything up to its
  instant is published: see pipeline.sinks.commit).
"""

from typing import Iterable, NamedTuple

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
    levels: tuple[tuple[str, int], ...]
    transition_totals: tuple[tuple[str, int], ...]


class CounterUpdate(NamedTuple):
    """The absolute values, as of `as_of_ms`, of the keys that changed at that instant."""

    as_of_ms: int
    levels: tuple[tuple[str, int], ...]  # players(L, as_of); 0 when the level emptied
    transition_totals: tuple[tuple[str, int], ...]  # transitions before as_of, since the first run


class Ledger(NamedTuple):
    levels: tuple[tuple[str, int], ...] = ()  # non-zero counts only
    transition_totals: tuple[tuple[str, int], ...] = ()
    window_transitions: tuple[tuple[str, int], ...] = ()  # the open window's so far
    next_instant_ms: int | None = None  # the next instant to close; None before any event
    last_change_ms: int | None = None  # the latest instant that applied a sum

    @classmethod
    def resume_from(cls, checkpoint: Checkpoint, update_ms: int) -> "Ledger":
        return cls(checkpoint.levels, checkpoint.transition_totals, (), checkpoint.as_of_ms + update_ms)

    def is_active(self) -> bool:
        """Players in the game, or a window with transitions still open."""
        return bool(self.levels or self.window_transitions)


class LedgerStep(NamedTuple):
    ledger: Ledger
    updates: list[CounterUpdate]
    snapshots: list[Snapshot]
    checkpoints: list[Checkpoint]
    later: list[IntervalSum]  # sums of instants not closed yet
    already_applied: list[IntervalSum]  # sums of instants closed before (a replay)


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

    levels = dict(ledger.levels)
    totals = dict(ledger.transition_totals)
    in_window = dict(ledger.window_transitions)
    updates, snapshots, checkpoints = [], [], []
    instant = next_instant
    last_change = ledger.last_change_ms
    while instant <= until_ms:
        if not levels and not in_window and not due:
            break  # quiet: the next event's instant picks up from here, filling the gap
        changed_levels, changed_totals = {}, {}
        if instant in due:
            last_change = instant
        for s in due.pop(instant, []):
            if s.kind == LEVEL:
                if s.total:
                    changed_levels[s.key] = levels.get(s.key, 0) + s.total
                    levels[s.key] = changed_levels[s.key]
                    if levels[s.key] == 0:
                        del levels[s.key]
            else:
                changed_totals[s.key] = totals.get(s.key, 0) + s.total
                totals[s.key] = changed_totals[s.key]
                in_window[s.key] = in_window.get(s.key, 0) + s.total
        if changed_levels or changed_totals:
            updates.append(
                CounterUpdate(
                    instant, tuple(sorted(changed_levels.items())), tuple(sorted(changed_totals.items()))
                )
            )
        if instant % window_ms == 0:  # a window end
            snapshots.append(
                Snapshot(
                    instant - window_ms,
                    instant,
                    tuple(sorted((k, n) for k, n in levels.items() if n > 0)),
                    tuple(sorted((k, n) for k, n in in_window.items() if n > 0)),
                )
            )
            in_window = {}
            checkpoints.append(
                Checkpoint(instant, tuple(sorted(levels.items())), tuple(sorted(totals.items())))
            )
        instant += update_ms
    new_ledger = Ledger(
        tuple(sorted(levels.items())),
        tuple(sorted(totals.items())),
        tuple(sorted(in_window.items())),
        instant,
        last_change,
    )
    return LedgerStep(new_ledger, updates, snapshots, checkpoints, later, already)


def is_stale(ledger: Ledger, stale_after_ms: int | None) -> bool:
    """Players still counted, yet no transition for longer than any player can stay
    without one (the timeout, plus a window): a count that can never come back to 0.
    The contract makes this impossible; if it happens anyway, waking at every window
    end would go on until the end of time once the input has ended."""
    return (
        stale_after_ms is not None
        and ledger.last_change_ms is not None
        and ledger.next_instant_ms is not None
        and ledger.next_instant_ms - ledger.last_change_ms > stale_after_ms
    )


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
        wake_ms = max(ends)
    elif is_stale(ledger, stale_after_ms):
        return None
    elif ledger.next_instant_ms is not None and ledger.is_active():
        wake_ms = -(-ledger.next_instant_ms // window_ms) * window_ms
    else:
        return None
    return wake_ms if ledger.next_instant_ms is None else max(wake_ms, ledger.next_instant_ms)
