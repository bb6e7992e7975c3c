"""The Beam work-arounds still fit the Beam they patch (pipeline/runtime/beam_patches.py)."""

import contextlib
import sys

import objsize
from apache_beam import coders
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.portable_runner import PipelineResult
from apache_beam.runners.worker import bundle_processor, sdk_worker, statecache

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


class _RunnerState:
    """The runner's side of the state API, counting the reads that reach it."""

    def __init__(self):
        self.stored, self.reads = {}, 0

    @contextlib.contextmanager
    def process_instruction_id(self, bundle_id):
        yield

    def get_raw(self, state_key, continuation_token=None):
        self.reads += 1
        return self.stored.get(state_key.SerializeToString(), b""), None

    def append_raw(self, state_key, data):
        key = state_key.SerializeToString()
        self.stored[key] = self.stored.get(key, b"") + data
        return sdk_worker._Future.done()

    def clear(self, state_key):
        self.stored.pop(state_key.SerializeToString(), None)
        return sdk_worker._Future.done()

    def done(self):
        pass


def _player_state_key(player: bytes):
    return beam_fn_api_pb2.StateKey(
        bag_user_state=beam_fn_api_pb2.StateKey.BagUserState(
            transform_id="TrackLevels", user_state_id="player", window=b"global", key=player
        )
    )


def _bundle(handler, bundle_id, state_key, coder, add=None) -> list:
    """One bundle as Prism sends it (no cache token): read the state, maybe add to it."""
    with handler.process_instruction_id(bundle_id, []):
        value = list(handler.blocking_get(state_key, coder))
        if add is not None:
            handler.extend(state_key, coder, [add]).get()
    return value


def test_on_prism_user_state_read_once_stays_cached_across_bundles_and_writes_reach_both():
    assert beam_patches.cache_state_on_prism() is True
    assert beam_patches.cache_state_on_prism() is True  # idempotent
    runner = _RunnerState()
    handler = sdk_worker.GlobalCachingStateHandler(statecache.StateCache(64 << 20), runner)
    coder = coders.StrUtf8Coder().get_impl()
    alice, bob = _player_state_key(b"alice"), _player_state_key(b"bob")

    assert _bundle(handler, "1", alice, coder, add="gems-in-the-deep") == []
    assert runner.reads == 1
    assert _bundle(handler, "2", alice, coder, add="shadow-guard") == ["gems-in-the-deep"]
    assert _bundle(handler, "3", alice, coder) == ["gems-in-the-deep", "shadow-guard"]
    assert runner.reads == 1  # bundles 2 and 3 read from the cache
    assert _bundle(handler, "4", bob, coder) == []
    assert runner.reads == 2  # another key: read from the runner once
    # The runner holds every write too: a fresh worker (a restart) reads the same.
    fresh = sdk_worker.GlobalCachingStateHandler(statecache.StateCache(64 << 20), runner)
    assert _bundle(fresh, "5", alice, coder) == ["gems-in-the-deep", "shadow-guard"]


def test_a_bundle_with_its_own_user_state_token_keeps_it():
    own = beam_fn_api_pb2.ProcessBundleRequest.CacheToken(
        user_state=beam_fn_api_pb2.ProcessBundleRequest.CacheToken.UserState(), token=b"flink-7"
    )
    side_input = beam_fn_api_pb2.ProcessBundleRequest.CacheToken(
        side_input=beam_fn_api_pb2.ProcessBundleRequest.CacheToken.SideInput(
            transform_id="t", side_input_id="s"
        ),
        token=b"side",
    )
    assert beam_patches.with_user_state_token([own]) == [own]
    assert beam_patches.with_user_state_token([side_input]) == [
        side_input,
        beam_patches.PRISM_USER_STATE_TOKEN,
    ]
    assert beam_patches.with_user_state_token([]) == [beam_patches.PRISM_USER_STATE_TOKEN]


class _Answer:
    def __init__(self, log, request):
        self._log, self._request = log, request

    def get(self):
        self._log.append(("wait", self._request))


class _RecordingRunner:
    """A state handler that records each request sent and each answer waited for."""

    def __init__(self):
        self.log = []

    def clear(self, state_key):
        self.log.append(("clear", state_key.bag_user_state.key))
        return _Answer(self.log, ("clear", state_key.bag_user_state.key))

    def extend(self, state_key, coder, values):
        self.log.append(("append", state_key.bag_user_state.key, tuple(values)))
        return _Answer(self.log, ("append", state_key.bag_user_state.key))


def _cells(runner):
    """What a bundle of TrackLevels leaves to commit: a value written for two players,
    one player's state cleared, one player's bag appended to, one read only."""
    coder = coders.PickleCoder()
    cells = {
        name: bundle_processor.SynchronousBagRuntimeState(runner, _player_state_key(name), coder)
        for name in (b"ann", b"bo", b"cy", b"di", b"ed")
    }
    ann = bundle_processor.ReadModifyWriteRuntimeState(cells[b"ann"])
    ann.write("level-1")
    bo = bundle_processor.ReadModifyWriteRuntimeState(cells[b"bo"])
    bo.write("level-2")
    cy = bundle_processor.ReadModifyWriteRuntimeState(cells[b"cy"])
    cy.clear()
    cells[b"di"].add("pending")
    return [ann, bo, cy, cells[b"di"], cells[b"ed"]]


def test_state_writes_committed_in_one_round_send_what_beam_sends_then_wait():
    assert beam_patches.commit_state_in_one_round() is True
    assert beam_patches.commit_state_in_one_round() is True  # idempotent
    assert bundle_processor.FnApiUserStateContext.commit is beam_patches.commit_all_then_wait

    beams, ours = _RecordingRunner(), _RecordingRunner()
    for state in _cells(beams):
        state.commit()  # Beam's own commit, cell by cell
    context = bundle_processor.FnApiUserStateContext.__new__(bundle_processor.FnApiUserStateContext)
    context._all_states = dict(enumerate(_cells(ours)))
    context.commit()

    def requests(log):
        return [entry for entry in log if entry[0] != "wait"]

    assert (
        requests(ours.log)
        == requests(beams.log)
        == [
            ("clear", b"ann"),
            ("append", b"ann", ("level-1",)),
            ("clear", b"bo"),
            ("append", b"bo", ("level-2",)),
            ("clear", b"cy"),
            ("append", b"di", ("pending",)),
        ]
    )
    # Beam waits after each cell; this waits once every request is out, for each cell's last.
    assert [entry[0] for entry in beams.log].count("wait") == 4
    assert ours.log[:6] == requests(ours.log)
    assert ours.log[6:] == [
        ("wait", ("append", b"ann")),
        ("wait", ("append", b"bo")),
        ("wait", ("clear", b"cy")),
        ("wait", ("append", b"di")),
    ]


def test_a_players_state_is_weighed_by_its_estimate_and_pickles_back_whole():
    """The state cache weighs a stored player without walking it (track_players._StoredPlayer)."""
    from apache_beam.coders import PickleCoder

    from pipeline.rules.player_state import Pending
    from pipeline.transforms.track_players import _StoredPlayer

    timeline = VALUES[2]
    pending = tuple(Pending(1_795_000_000_000 + n, n, "a-level", (f"event-{n}", 0)) for n in range(3))
    stored = _StoredPlayer(timeline, pending)
    weight = _StoredPlayer.TIMELINE_BYTES + 3 * _StoredPlayer.PENDING_BYTES
    assert statecache.get_deep_size(stored) == sys.getsizeof(stored)  # nothing walked
    assert weight <= sys.getsizeof(stored) <= weight + 64  # the estimate, plus the object's header
    again = PickleCoder().decode(PickleCoder().encode(stored))
    assert (again.timeline, again.pending) == (timeline, pending)


def test_the_global_window_is_built_once_and_is_the_same_window(monkeypatch):
    from apache_beam.transforms import window

    end = window.GlobalWindow().end
    assert beam_patches.build_global_window_once() is True
    assert beam_patches.build_global_window_once() is True  # idempotent
    reads = []
    read_end = window.GlobalWindow._getTimestampFromProto
    monkeypatch.setattr(
        window.GlobalWindow, "_getTimestampFromProto", staticmethod(lambda: reads.append(1) or read_end())
    )
    windows = window.GlobalWindows().assign(None) + [window.GlobalWindow() for _ in range(3)]
    assert reads == []  # built once, before: not again for every element
    assert all(w is windows[0] and w == window.GlobalWindow() for w in windows)
    assert windows[0].end == end == window.GlobalWindow._getTimestampFromProto()
    assert windows[0].max_timestamp() < end


def _commit(cells) -> None:
    """A bundle's end: its cells committed as the patched FnApiUserStateContext does."""
    context = bundle_processor.FnApiUserStateContext.__new__(bundle_processor.FnApiUserStateContext)
    context._all_states = dict(enumerate(cells))
    context.commit()


def test_a_player_who_left_leaves_the_state_cache_and_one_who_returns_reads_the_runner():
    assert beam_patches.cache_state_on_prism() is True
    assert beam_patches.commit_state_in_one_round() is True
    runner = _RunnerState()
    cache = statecache.StateCache(64 << 20)
    handler = sdk_worker.GlobalCachingStateHandler(cache, runner)
    alice, bob = _player_state_key(b"alice"), _player_state_key(b"bob")

    def cell(state_key):
        bag = bundle_processor.SynchronousBagRuntimeState(handler, state_key, coders.PickleCoder())
        return bundle_processor.ReadModifyWriteRuntimeState(bag)

    with handler.process_instruction_id("1", []):
        alice_state, bob_state = cell(alice), cell(bob)
        assert alice_state.read() is None and bob_state.read() is None
        alice_state.write("level-1")
        bob_state.write("level-2")
        _commit([alice_state, bob_state])
    assert cache.size() == 2 and runner.reads == 2

    with handler.process_instruction_id("2", []):
        alice_state, bob_state = cell(alice), cell(bob)
        assert alice_state.read() == "level-1" and bob_state.read() == "level-2"  # from the cache
        alice_state.clear()  # alice timed out: nothing of her stays
        bob_state.write("level-3")
        _commit([alice_state, bob_state])
    assert cache.size() == 1  # bob's value only: alice's empty cell is not kept
    assert runner.reads == 2

    with handler.process_instruction_id("3", []):
        assert cell(alice).read() is None  # she comes back: the runner has nothing of her
        assert cell(bob).read() == "level-3"
    assert runner.reads == 3  # one read, hers
