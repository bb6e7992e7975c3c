"""The bench's probes, checks and direct calls into the pipeline.

The probes wrap pipeline functions by name (bench.probes): a wrapper that no
longer takes what the function it replaces takes fails every call of a measured run
(it did once, when publish_snapshot gained its S3 client)."""

import inspect

from bench import probes
from bench.checks import check_run
from pipeline.rules.snapshot_format import Snapshot, history_names
from pipeline.rules.times import iso_utc
from pipeline.sinks import dynamodb, snapshots
from pipeline.sources import kinesis
from pipeline.transforms import keep_ledger

WRAPPED = [
    (dynamodb, "write_item"),
    (snapshots, "publish_snapshot"),
    (keep_ledger, "advance_ledger"),
    (kinesis._ReadShardsFn, "_output"),
]


def test_each_probe_takes_every_argument_the_function_it_wraps_takes(monkeypatch):
    originals = {}
    for owner, name in WRAPPED:
        originals[(owner, name)] = getattr(owner, name)
        monkeypatch.setattr(owner, name, getattr(owner, name))  # put back after the test
    probes.install()
    for (owner, name), original in originals.items():
        probe = getattr(owner, name)
        assert probe is not original, f"{name} was not probed"
        parameters = inspect.signature(original).parameters.values()
        positional = [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
        inspect.signature(probe).bind(*positional)  # TypeError when the probe takes fewer


def test_the_bench_check_counts_a_window_cut_off_by_the_stop_as_a_mismatch(tmp_path):
    """A run stopped between a window's two history documents is a mismatch in the bench's
    figures, not a crash of the bench."""
    end_ms = 1_795_000_060_000
    snapshots.publish_snapshot(str(tmp_path), 60, Snapshot(end_ms - 60_000, end_ms, (), ()))
    (tmp_path / history_names(end_ms)[1]).unlink()
    checked = check_run([], str(tmp_path), timeout_secs=300, window_secs=60, finished=False)
    assert not checked["exact"]
    assert checked["mismatches"] == [f"window {iso_utc(end_ms)}: one of its two documents only"]


def test_the_parse_figures_still_run_the_parse_step_they_measure():
    """bench.parse (and bench.hostile, alike) call the parse DoFn's process() directly,
    outside a pipeline: it failed once when the DoFn began counting per bundle."""
    from bench import parse

    figures = parse.measure(lines=300)
    assert figures["lines"] > 0 and figures["parse_lines_per_s"] > 0
