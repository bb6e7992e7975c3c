"""Changes to measure before anyone makes them: each one patches Beam or the pipeline in
a bench child's process only (bench.child's "experiments"), so its effect is measured
beside the unchanged pipeline in the same bench run. None of them is in the product.

- pipeline_state_commits: Beam's SDK harness waits, at the end of each bundle, for
  every state cell's writes one cell after another; this sends them all, then waits.
- flink_state_cache: turn on the SDK harness's state cache (--max_cache_memory_usage_mb,
  off by default in Beam): Flink gives cache tokens, so state read once stays cached.
"""


def pipeline_state_commits():
    """Experiment: at the end of a bundle, send every state cell's writes first and then
    wait for all of them, instead of waiting for each cell's before sending the next
    (Beam's FnApiUserStateContext.commit). The order of requests per cell is unchanged
    (one stream, in order); only the waiting moves to the end."""
    from apache_beam.runners.worker import bundle_processor

    def commit(self):
        waits = []
        for state in self._all_states.values():
            bag = getattr(state, "_underlying_bag_state", state)
            if type(bag) is not bundle_processor.SynchronousBagRuntimeState:
                state.commit()
                continue
            future = None
            if bag._cleared:
                future = bag._state_handler.clear(bag._state_key)
            if bag._added_elements:
                future = bag._state_handler.extend(
                    bag._state_key, bag._value_coder.get_impl(), bag._added_elements
                )
            if future is not None:
                waits.append(future)
        for future in waits:
            future.get()

    bundle_processor.FnApiUserStateContext.commit = commit


def gil_switch_1ms():
    """The interpreter hands the GIL over every 1 ms instead of 5 ms, so the harness's
    state, data and control threads are not kept waiting behind a busy DoFn thread."""
    import sys

    sys.setswitchinterval(0.001)


def gil_switch_0_2ms():
    import sys

    sys.setswitchinterval(0.0002)


EXPERIMENTS = {
    "gil_switch_1ms": gil_switch_1ms,
    "gil_switch_0_2ms": gil_switch_0_2ms,
    "pipeline_state_commits": pipeline_state_commits,
}


# Experiments that are pipeline flags rather than patches.
FLAGS = {"flink_state_cache": ["--max_cache_memory_usage_mb=256"]}


def flags(names) -> list:
    return [flag for name in names for flag in FLAGS.get(name, [])]


def patches(names) -> list:
    return [name for name in names if name not in FLAGS]


def apply(name: str):
    EXPERIMENTS[name]()
