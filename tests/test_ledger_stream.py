"""The ledger as a stream keeps it, on Prism (the engine streams run on): sums that
reach it behind the watermark (a backlog) are closed in a few big wakes, and every
window still gets its snapshot."""

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from pipeline.rules.ledger import LEVEL, TRANSITION, IntervalSum
from pipeline.runtime import engines
from pipeline.transforms.keep_ledger import KeepLedger

S = 1000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000  # an hour boundary
SNAPSHOTS = []


class Collect(beam.DoFn):
    def process(self, snapshot):
        SNAPSHOTS.append(snapshot.window_end_ms)


def sums_of_a_move(seconds, from_level, to_level):
    """A player moving at `seconds`: the interval sums of the update interval ending then."""
    end = T0 + seconds * S
    sums = [IntervalSum(TRANSITION, f"{from_level}/{to_level}", end, 1)]
    if to_level:
        sums.append(IntervalSum(LEVEL, to_level, end, 1))
    if from_level:
        sums.append(IntervalSum(LEVEL, from_level, end, -1))
    return sums


def at(seconds):
    return Timestamp(micros=(T0 + seconds * S) * 1000)


def before(seconds):
    """Where a sum of the interval ending at `seconds` is stamped: just before its end
    (CountPerInterval: 1 µs before; a portable TestStream carries milliseconds)."""
    return Timestamp(micros=(T0 + seconds * S - 1) * 1000)


def test_on_prism_a_backlog_of_sums_is_closed_in_a_few_wakes_not_one_per_window():
    """A player enters at 5 s and is closed live; then nine moves, one per 10 s window,
    and their leaving at 100 s reach the ledger before the watermark passes any of them
    (as in a backlog). Prism
    hands a key its elements and timers in timestamp order, so a timer at the next
    window end would let the sums through one window per wake. Checked once with that
    timer (the quiet ledger's CLOSE at the next window end): 20 wakes. Here: at most 4,
    and still one snapshot per window."""
    opts = PipelineOptions(["--streaming"])
    engines.choose_engine(opts, streaming=True)
    stream = TestStream().add_elements(sums_of_a_move(5, "", "a"), event_timestamp=before(5))
    stream = stream.advance_watermark_to(at(6))
    for n, seconds in enumerate(range(15, 100, 10)):
        move = ("a", "b") if n % 2 == 0 else ("b", "a")
        stream = stream.add_elements(sums_of_a_move(seconds, *move), event_timestamp=before(seconds))
    last = "b" if n % 2 == 0 else "a"
    stream = stream.add_elements(sums_of_a_move(100, last, ""), event_timestamp=before(100))  # leaves
    stream = stream.advance_watermark_to(at(101)).advance_watermark_to_infinity()

    SNAPSHOTS.clear()
    pipeline = beam.Pipeline(options=opts)
    ledger = pipeline | stream | "KeepLedger" >> KeepLedger(update_secs=5, window_secs=10)
    ledger[KeepLedger.SNAPSHOTS] | beam.ParDo(Collect())
    result = pipeline.run()
    result.wait_until_finish()

    assert sorted(SNAPSHOTS) == [T0 + end * S for end in range(10, 101, 10)]
    wakes = result.metrics().query(MetricsFilter().with_name("ledger_wakes"))["counters"]
    assert sum(counter.committed for counter in wakes) <= 4


def test_on_prism_a_player_who_stays_in_a_level_keeps_the_windows_coming():
    """A player enters at 5 s and then only ever sends the level they are in: no
    transition at all, for as long as the input runs (here 300 s; timeout 60 s). Every
    window end the watermark passes still gets its snapshot while the input runs.
    Checked once with the staleness rule applied while the input ran ("no transition
    for longer than the timeout + a window is drift"): the snapshots stopped at 80 s."""
    opts = PipelineOptions(["--streaming"])
    engines.choose_engine(opts, streaming=True)
    stream = TestStream().add_elements(sums_of_a_move(5, "", "a"), event_timestamp=before(5))
    for seconds in range(6, 310, 10):
        stream = stream.advance_watermark_to(at(seconds)).advance_processing_time(10)
    stream = stream.advance_watermark_to_infinity()

    SNAPSHOTS.clear()
    pipeline = beam.Pipeline(options=opts)
    ledger = pipeline | stream | "KeepLedger" >> KeepLedger(update_secs=5, window_secs=10, timeout_secs=60)
    ledger[KeepLedger.SNAPSHOTS] | beam.ParDo(Collect())
    pipeline.run().wait_until_finish()

    # Each window once, every one the watermark passed while the input ran. (No leaving
    # at the end: not an input the contract allows, as the player's timeout would come;
    # once it has ended the staleness rule stops the ledger within a window or so.)
    assert len(SNAPSHOTS) == len(set(SNAPSHOTS))
    assert sorted(SNAPSHOTS)[:30] == [T0 + end * S for end in range(10, 301, 10)]
