"""Two work-arounds for Beam's Python SDK, each guarded, logged and tested
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
"""

import logging

import objsize
from apache_beam.runners.worker import statecache
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


def size_state_cheaply() -> bool:
    """Idempotent. Returns whether the patch is in place."""
    if _applied:
        return _applied[0]
    if not BEAM_VERSION.startswith(PATCHED_BEAM_VERSIONS):
        _LOG.warning(
            "Beam %s: state-cache sizing left as Beam does it (patch checked for %s only); "
            "streaming may be slower, see pipeline/runtime/beam_patches.py",
            BEAM_VERSION,
            ", ".join(v + "x" for v in PATCHED_BEAM_VERSIONS),
        )
        _applied.append(False)
        return False
    statecache.get_deep_size = _deep_size_without_module_walk
    _applied.append(True)
    _LOG.info("Beam %s: state-cache sizing without objsize's module walk", BEAM_VERSION)
    return True


def fresh_metrics(pipeline_result):
    """The job's metrics as of now (see the module docstring)."""
    if hasattr(pipeline_result, "_metrics"):
        pipeline_result._metrics = None
    return pipeline_result.metrics()
