"""TestStream tests of the stateful stage (parse + TrackPlayerLevels): out-of-order
arrival, duplicates, timeouts, late data and the end of input, with the watermark
moved explicitly.

TestStream runs only on the BundleBasedDirectRunner, which does not hold the output
watermark for user timers (a TODO in Beam's direct_userstate.py), so stages after the
tracker would see its timeouts as late there. These tests therefore stop at the
tracker; the stages after it are tested on the FnApiRunner (which does hold) in
test_main_end_to_end.py and in the Kinesis end-to-end tests."""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from pipeline.rules.observations import EnrichedRecord
from pipeline.testing.enriched_lines import enriched_line, level_context
from pipeline.transforms.parse_events import ParseEnrichedEvents
from pipeline.transforms.track_players import TrackPlayerLevels

S = 1000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000  # an hour boundary


def record(event_id, seconds, player, level):
    return EnrichedRecord(
        f"test:{event_id}", enriched_line(event_id, T0 + seconds * S, [level_context(player, level)])
    )


def at(seconds):
    return Timestamp(micros=(T0 + seconds * S) * 1000)


def options(**flags):
    argv = ["--timeout_secs=300", "--window_secs=60", "--update_secs=5"] + [
        f"--{k}={v}" for k, v in flags.items()
    ]
    opts = PipelineOptions(argv)
    opts.view_as(StandardOptions).streaming = True
    opts.view_as(StandardOptions).runner = "BundleBasedDirectRunner"  # TestStream needs it
    return opts


def with_time(transition, ts=beam.DoFn.TimestampParam):
    """(key, seconds after T0, element timestamp in seconds after T0)."""
    return transition.key, (transition.time_ms - T0) / S, (ts.micros // 1000 - T0) / S


# What the pipeline emitted, by output name. The BundleBasedDirectRunner runs in this
# process, so a DoFn can hand elements back; assert_that's grouping in the global
# window does not wait for the end of a TestStream.
COLLECTED = {}


class Collect(beam.DoFn):
    def __init__(self, name):
        self._name = name

    def process(self, element):
        COLLECTED.setdefault(self._name, []).append(element)


def run(stream):
    """Parse and track the TestStream; return (result, outputs by name)."""
    COLLECTED.clear()
    pipeline = TestPipeline(options=options())
    parsed = pipeline | stream | "ParseEvents" >> ParseEnrichedEvents()
    tracked = parsed[ParseEnrichedEvents.OBSERVATIONS] | "TrackPlayers" >> TrackPlayerLevels(timeout_secs=300)
    (
        tracked[TrackPlayerLevels.TRANSITIONS]
        | "WithTime" >> beam.Map(with_time)
        | "Collect" >> beam.ParDo(Collect("transitions"))
    )
    dead_letters = (
        parsed[ParseEnrichedEvents.DEAD_LETTERS],
        tracked[TrackPlayerLevels.LATE],
    ) | beam.Flatten()
    dead_letters | "CollectDeadLetters" >> beam.ParDo(Collect("dead_letters"))
    result = pipeline.run()
    result.wait_until_finish()
    return result, {name: list(COLLECTED.get(name, [])) for name in ("transitions", "dead_letters")}


def test_out_of_order_arrival_within_the_watermark_is_applied_in_event_time_order():
    stream = (
        TestStream()
        .add_elements([record("e3", 30, "p1", "c"), record("e1", 10, "p1", "a")], event_timestamp=at(30))
        .add_elements([record("e2", 20, "p1", "b")], event_timestamp=at(20))
        .advance_watermark_to(at(40))
        .add_elements([record("e5", 50, "p1", "a"), record("e4", 45, "p1", "b")], event_timestamp=at(50))
        .advance_watermark_to_infinity()
    )

    _, out = run(stream)
    assert sorted(out["transitions"], key=lambda t: t[1]) == [
        ("/a", 10, 10),
        ("a/b", 20, 20),
        ("b/c", 30, 30),
        ("c/b", 45, 45),
        ("b/a", 50, 50),
        ("a/", 350, 350),
    ]


def test_duplicates_change_nothing():
    twice = [record("e1", 10, "p1", "a"), record("e2", 20, "p1", "b")] * 2
    stream = (
        TestStream()
        .add_elements(twice, event_timestamp=at(10))
        .advance_watermark_to(at(20))
        .add_elements([record("e2", 20, "p1", "b")], event_timestamp=at(20))  # again, at the frontier
        .advance_watermark_to_infinity()
    )

    _, out = run(stream)
    assert sorted(out["transitions"], key=lambda t: t[1]) == [
        ("/a", 10, 10),
        ("a/b", 20, 20),
        ("b/", 320, 320),
    ]


def test_a_player_who_times_out_and_comes_back_leaves_and_re_enters():
    stream = (
        TestStream()
        .add_elements([record("e1", 10, "p1", "a")], event_timestamp=at(10))
        .advance_watermark_to(at(400))  # p1 times out at 310 while the stream is quiet
        .add_elements([record("e2", 400, "p1", "a")], event_timestamp=at(400))
        .add_elements([record("e3", 700, "p1", "a")], event_timestamp=at(700))  # exactly at 400 + 300
        .advance_watermark_to_infinity()
    )

    _, out = run(stream)
    assert sorted(out["transitions"], key=lambda t: (t[1], t[0] != "a/")) == [
        ("/a", 10, 10),
        ("a/", 310, 310),
        ("/a", 400, 400),
        ("a/", 700, 700),
        ("/a", 700, 700),
        ("a/", 1000, 1000),
    ]


def test_a_late_observation_is_dead_lettered_counted_and_not_applied():
    stream = (
        TestStream()
        .add_elements([record("e1", 10, "p1", "a"), record("e2", 40, "p1", "b")], event_timestamp=at(40))
        .advance_watermark_to(at(50))
        .add_elements([record("late", 30, "p1", "c")], event_timestamp=at(30))  # before what p1 applied
        .advance_watermark_to_infinity()
    )

    _, out = run(stream)
    assert sorted(out["transitions"], key=lambda t: t[1]) == [
        ("/a", 10, 10),
        ("a/b", 40, 40),
        ("b/", 340, 340),
    ]
    # Also counted (metric late_observations); the BundleBasedDirectRunner does not
    # report a stateful DoFn's counters, so the count is checked on the FnApiRunner.
    assert [(d.reason, d.event_time_ms - T0) for d in out["dead_letters"]] == [("late", 30 * S)]


def test_at_the_end_of_input_every_player_leaves_and_every_count_returns_to_zero():
    players = [("p1", "a", 10), ("p2", "a", 20), ("p3", "b", 70), ("p1", "b", 130), ("p4", "c", 200)]
    stream = TestStream()
    for n, (player, level, seconds) in enumerate(players):
        stream = stream.add_elements([record(f"e{n}", seconds, player, level)], event_timestamp=at(seconds))
        stream = stream.advance_watermark_to(at(seconds))
    stream = stream.advance_watermark_to_infinity()

    _, out = run(stream)
    counts = {}
    for key, time_s, _ in out["transitions"]:
        from_level, to_level = key.split("/")
        counts[from_level] = counts.get(from_level, 0) - 1
        counts[to_level] = counts.get(to_level, 0) + 1
        if time_s < 120:
            early = dict(counts)
    assert {level: n for level, n in early.items() if level} == {"a": 2, "b": 1}
    assert {level: n for level, n in counts.items() if level} == {"a": 0, "b": 0, "c": 0}
    assert counts[""] == 0  # every player who entered also left
    assert len(out["transitions"]) == 9  # 4 players enter, p1 moves once, 4 leave


def test_on_prism_a_players_backlog_is_applied_in_a_few_wakes_not_one_per_instant():
    """Ten observations of one player, all behind the watermark by the time their
    timers fire (as in a backlog): the LAST timer applies every instant at once, so
    the player wakes three times (the first instant, the last, the timeout) with the
    same transitions as one wake per instant would give. Checked once without LAST:
    11 wakes, one per instant and one for the timeout."""
    from apache_beam.metrics.metric import MetricsFilter

    from pipeline.runtime import engines

    opts = PipelineOptions(["--streaming"])
    engines.choose_engine(opts, streaming=True)  # Prism, as a stream runs
    levels = "abcab" * 2
    COLLECTED.clear()
    pipeline = beam.Pipeline(options=opts)
    parsed = (
        pipeline
        | beam.Create([record(f"e{n}", 10 * n, "p1", level) for n, level in enumerate(levels)])
        | "ParseEvents" >> ParseEnrichedEvents()
    )
    tracked = parsed[ParseEnrichedEvents.OBSERVATIONS] | "TrackPlayers" >> TrackPlayerLevels(timeout_secs=300)
    transitions = tracked[TrackPlayerLevels.TRANSITIONS] | "WithTime" >> beam.Map(with_time)
    transitions | beam.ParDo(Collect("transitions"))
    result = pipeline.run()
    result.wait_until_finish()

    expected = (
        [("/a", 0.0, 0.0)]
        + [(f"{levels[n - 1]}/{levels[n]}", 10.0 * n, 10.0 * n) for n in range(1, 10)]
        + [("b/", 390.0, 390.0)]
    )
    assert sorted(COLLECTED["transitions"], key=lambda t: t[1]) == expected
    wakes = result.metrics().query(MetricsFilter().with_name("player_wakes"))["counters"]
    assert sum(counter.committed for counter in wakes) == 3
