"""Six work-arounds for Beam's Python SDK, each guarded, logged and tested
(tests/test_beam_patches.py).

1. State-cache sizing (`size_state_cheaply`). Beam weighs every value it puts in its
   state cache with objsize, and objsize, unless told otherwise, first collects the
   globals of every loaded module to exclude them: about 0.36 ms per state write,
   whatever the value (a 3-character string costs as much as a PlayerTimeline), against
   0.03 ms for the same weight without that walk (`exclude_modules_globals=False`; the
   cached values of this pipeline hold no module globals). With a write or two per
   observation that capped streaming at a few hundred events per second. Applied only
   on the Beam versions it was checked against (PATCHED_BEAM_VERSIONS), from the stateful
   DoFns' setup(), i.e. in every SDK worker. Upstream issue, ready to file:
   docs/upstream/beam-statecache-objsize.md.

2. Live metrics (`fresh_metrics`). A portable runner's result (Prism, Flink) caches the
   first answer of `metrics()` for good (PipelineResult.metrics in Beam's
   portable_runner.py), which suits a finished job, not one that runs forever; there is
   no public way to ask again, so the cache is dropped first.

3. User state cached across bundles on Prism (`cache_state_on_prism`). The SDK harness
   keeps user state between bundles only under a cache token from the runner, and Prism
   sends none, so every bundle reads every key's state again over the wire: measured,
   state calls took over 80% of the stream's busiest stage. On Prism a constant token is
   sound, which it is not on every runner: Prism runs one SDK worker (LOOPBACK, in the
   launching process); never gives one key to two bundles at once (its element
   manager's in-progress keys), and never splits a bundle, which would free the
   split-off keys early, with `prism_disable_sdf_split` (always set: engines.py applies
   this patch only with it); never retries a bundle (a failed bundle fails the job, and
   the restart starts a fresh process and cache); and never changes user state behind
   the worker's back (every stateful step here is in the global window, whose state it
   never expires while the stream runs). The cache hands the same object to every
   bundle, so a value read from state is never changed in place (PlayerTimeline and the
   ledger's parts are NamedTuples; advance_ledger copies before it changes anything).
   A bundle that already has a user state token (any other runner) is left as it is.
   With --max_cache_memory_usage_mb (engines.choose_engine sets it for Prism), the state
   read once stays in the cache, and writes go to both. Measured on a 15k-event
   backlog: 188 -> 283 events/s with the one-cell player state (README "Performance").

4. State writes committed in one round (`commit_state_in_one_round`). At the end of a
   bundle Beam's SDK harness commits each state cell in turn and waits for the runner's
   answer before sending the next cell's writes: a bundle that touched 200 players waits
   for 200 round trips one after another. This sends every cell's writes first, the
   same requests in the same order on the same stream (so one cell's clear still comes
   before its append, as in Beam's own commit, which already sends those two without
   waiting between them), then waits for all the answers before the bundle ends.
   Measured on a 15k-event backlog on Prism, with 3.: 317 -> 404 events/s. Any state
   type other than a bag or a value over one (the two this pipeline uses) is committed
   as Beam does it.

5. The global window built once (`build_global_window_once`). Every element a DoFn
   yields as a TimestampedValue is given its windows again, and in the global window
   that is `GlobalWindow()`: a singleton, whose __init__ nevertheless reads the end of
   the global window from a proto constant and builds its Timestamp anew each time, 1.7
   microseconds per element (4% of a backfill's worker time, profiled with py-spy).
   The patched __init__ does that the first time only; the instance and its end are the
   same as before.

6. A cleared state cell leaves the cache (in `send_state_writes`, so with 4.). Beam's
   state cache keeps a cleared cell as an empty list under its key, weighed as the list
   alone (56 bytes) while the entry holds about 370 (measured with tracemalloc over
   20,000 cleared cells): every player who left stayed in the cache until 256 MB of such
   weights pushed them out, about 4.8 million players and 1.7 GB later. The 30-minute
   soak at 1,000 events/s (2026-12-04, before this) saw the pipeline's memory grow 21 MiB
   over its last 20 minutes while about 20,000 players left (1.1 KB each; this explains
   about a third; most of the rest was botocore's service models, parsed anew for every
   AWS client, fixed in pipeline/aws.py). A cell cleared with nothing added after it is
   now dropped from the cache once its clear is sent; the next read of that key (a player
   coming back) asks the runner, after the clear on the same stream, and finds it empty.
"""

import logging

import objsize
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker import bundle_processor, sdk_worker, statecache
from apache_beam.transforms import window
from apache_beam.version import __version__ as BEAM_VERSION

_LOG = logging.getLogger(__name__)
PATCHED_BEAM_VERSIONS = ("2.77.",)  # the statecache module whose helpers this reuses, checked
_applied = []


def _deep_size_without_module_walk(*objs) -> int:
    return objsize.get_deep_size(
        *objs,
        get_size_func=statecache._size_func,
        get_referents_func=statecache._get_referents_func,
        filter_func=statecache._filter_func,
        exclude_modules_globals=False,
    )


def tune_sdk_worker() -> None:
    """The patches a DoFn's setup() applies in its SDK worker (1., 4. and 5.): the parser's
    and the stateful DoFns', so that every worker process has them."""
    size_state_cheaply()
    commit_state_in_one_round()
    build_global_window_once()


def _patch_once(done: list, fits: bool, apply, without: str, with_it: str) -> bool:
    """Apply a patch once per process, only on the Beam versions it was checked against
    and where what it replaces still exists (`fits`); log what the process runs with.
    `done` remembers the outcome. Returns whether the patch is in place."""
    if done:
        return done[0]
    if not (BEAM_VERSION.startswith(PATCHED_BEAM_VERSIONS) and fits):
        _LOG.warning(
            "Beam %s: %s (patch checked for %s only); streaming may be slower, "
            "see pipeline/runtime/beam_patches.py",
            BEAM_VERSION,
            without,
            ", ".join(v + "x" for v in PATCHED_BEAM_VERSIONS),
        )
        done.append(False)
        return False
    apply()
    done.append(True)
    _LOG.info("Beam %s: %s", BEAM_VERSION, with_it)
    return True


def size_state_cheaply() -> bool:
    """Idempotent. Returns whether the patch is in place."""

    def apply():
        statecache.get_deep_size = _deep_size_without_module_walk

    return _patch_once(
        _applied,
        True,
        apply,
        "state-cache sizing left as Beam does it",
        "state-cache sizing without objsize's module walk",
    )


def fresh_metrics(pipeline_result):
    """The job's metrics as of now (see the module docstring)."""
    if hasattr(pipeline_result, "_metrics"):
        pipeline_result._metrics = None
    return pipeline_result.metrics()


# The token every Prism bundle's user state is cached under (see 3. above).
PRISM_USER_STATE_TOKEN = beam_fn_api_pb2.ProcessBundleRequest.CacheToken(
    user_state=beam_fn_api_pb2.ProcessBundleRequest.CacheToken.UserState(), token=b"prism-one-worker"
)
_caching_on_prism = []


def with_user_state_token(cache_tokens) -> list:
    """The bundle's cache tokens, with PRISM_USER_STATE_TOKEN when it has no user state token."""
    tokens = list(cache_tokens)
    if not any(token.HasField("user_state") for token in tokens):
        tokens.append(PRISM_USER_STATE_TOKEN)
    return tokens


def cache_state_on_prism() -> bool:
    """Idempotent; call in the process whose SDK worker runs Prism's bundles (LOOPBACK:
    the launching one). Returns whether the patch is in place."""
    handler = sdk_worker.GlobalCachingStateHandler

    def apply():
        original = handler.process_instruction_id

        def process_instruction_id(self, bundle_id, cache_tokens):
            return original(self, bundle_id, with_user_state_token(cache_tokens))

        handler.process_instruction_id = process_instruction_id

    return _patch_once(
        _caching_on_prism,
        hasattr(handler, "process_instruction_id"),
        apply,
        "user state not cached across bundles on Prism",
        "user state cached across bundles on Prism",
    )


_one_round = []


def send_state_writes(bag):
    """What SynchronousBagRuntimeState.commit sends (a clear, then the added values), without
    waiting: the future of the last request, or None when there is nothing to write. A
    cell left empty leaves the state cache (see 6. above)."""
    last = None
    if bag._cleared:
        last = bag._state_handler.clear(bag._state_key)
        if not bag._added_elements:
            forget_cached(bag._state_handler, bag._state_key)
    if bag._added_elements:
        last = bag._state_handler.extend(bag._state_key, bag._value_coder.get_impl(), bag._added_elements)
    return last


def forget_cached(handler, state_key) -> None:
    """Drops a state cell's entry from the SDK worker's state cache, if it has one."""
    if not isinstance(handler, sdk_worker.CachingStateHandler):
        return
    token = handler._get_cache_token(state_key)
    if token:
        handler._state_cache.invalidate((handler._convert_to_cache_key(state_key), token))


def commit_all_then_wait(user_state_context) -> None:
    """FnApiUserStateContext.commit, with every cell's writes sent before any is waited for."""
    sent = []
    for state in user_state_context._all_states.values():
        bag = state
        if type(state) is bundle_processor.ReadModifyWriteRuntimeState:
            bag = state._underlying_bag_state
        if type(bag) is bundle_processor.SynchronousBagRuntimeState:
            last = send_state_writes(bag)
            if last is not None:
                sent.append(last)
        else:
            state.commit()  # any other kind of state, as Beam commits it
    for last in sent:
        last.get()


def commit_state_in_one_round() -> bool:
    """Idempotent. Returns whether the patch is in place (see 4. above)."""
    context = getattr(bundle_processor, "FnApiUserStateContext", None)

    def apply():
        context.commit = commit_all_then_wait

    return _patch_once(
        _one_round,
        hasattr(context, "commit"),
        apply,
        "state writes committed one cell at a time",
        "state writes committed in one round",
    )


_global_window_once = []


def build_global_window_once() -> bool:
    """Idempotent. Returns whether the patch is in place (see 5. above)."""
    built = window.GlobalWindow.__init__

    def apply():
        def __init__(self):
            if "_end" not in self.__dict__:  # the singleton's first construction
                built(self)

        window.GlobalWindow.__init__ = __init__

    return _patch_once(
        _global_window_once,
        hasattr(window.GlobalWindow, "_getTimestampFromProto"),
        apply,
        "the global window's end built again for every element",
        "the global window built once",
    )
