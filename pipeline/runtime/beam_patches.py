"""One work-around for a cost in Beam's Python SDK, applied where state is used.

Beam weighs every value it puts in its state cache with objsize, and objsize, unless
told otherwise, first collects the globals of every loaded module to exclude them:
about 0.6-0.8 ms per state write here, whatever the value (measured: a 3-character
string costs as much as a PlayerTimeline). With a write or two per observation that
capped the streaming pipeline at a few hundred events per second. The same weights
are computed without that walk (`exclude_modules_globals=False`: our state values
hold no module globals) in about 0.02 ms.
"""

import objsize
from apache_beam.runners.worker import statecache


def _deep_size_without_module_walk(*objs) -> int:
    return objsize.get_deep_size(
        *objs,
        get_size_func=statecache._size_func,
        get_referents_func=statecache._get_referents_func,
        filter_func=statecache._filter_func,
        exclude_modules_globals=False,
    )


def size_state_cheaply() -> None:
    """Idempotent; called from the stateful DoFns' setup(), i.e. in every SDK worker."""
    statecache.get_deep_size = _deep_size_without_module_walk


def fresh_metrics(pipeline_result):
    """The job's metrics as of now. A portable runner's result (Prism, Flink) caches the
    first answer of `metrics()` for good (PipelineResult.metrics in Beam's
    portable_runner.py), which suits a finished job, not one that runs forever; there is
    no public way to ask again, so the cache is dropped first."""
    if hasattr(pipeline_result, "_metrics"):
        pipeline_result._metrics = None
    return pipeline_result.metrics()
