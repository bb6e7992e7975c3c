"""The Beam work-arounds still fit the Beam they patch (pipeline/runtime/beam_patches.py)."""

import objsize
from apache_beam.runners.portability.portable_runner import PipelineResult
from apache_beam.runners.worker import statecache

from pipeline.rules.player_state import PlayerLevel, PlayerTimeline
from pipeline.runtime import beam_patches

VALUES = [
    "abc",
    ("level", 1),
    PlayerTimeline(
        PlayerLevel("a-level", 1_795_000_000_000), 1_795_000_000_000, frozenset({("e", 0)}), 3, None
    ),
    [PlayerTimeline() for _ in range(50)],
]


def test_the_names_the_sizing_patch_uses_still_exist():
    for name in ("get_deep_size", "_size_func", "_get_referents_func", "_filter_func"):
        assert callable(getattr(statecache, name)), name


def beams_own_size(value) -> int:
    """What statecache.get_deep_size computes unpatched (objsize's default module walk)."""
    return objsize.get_deep_size(
        value,
        get_size_func=statecache._size_func,
        get_referents_func=statecache._get_referents_func,
        filter_func=statecache._filter_func,
    )


def test_sizes_without_the_module_walk_equal_beams_own():
    for value in VALUES:
        assert beam_patches._deep_size_without_module_walk(value) == beams_own_size(value) > 0


def test_the_patch_applies_on_this_beam_and_only_once():
    assert beam_patches.size_state_cheaply() is True
    assert statecache.get_deep_size is beam_patches._deep_size_without_module_walk
    assert beam_patches.size_state_cheaply() is True  # idempotent


def test_a_portable_result_still_caches_its_metrics_where_fresh_metrics_clears_them():
    result = PipelineResult.__new__(PipelineResult)
    assert "_metrics" in PipelineResult.__init__.__code__.co_names  # the attribute fresh_metrics drops
    result._metrics = "cached"
    calls = []
    result.metrics = lambda: calls.append(result._metrics) or "fresh"
    assert beam_patches.fresh_metrics(result) == "fresh" and calls == [None]
