"""Changes to measure before anyone makes them: each one patches Beam or the pipeline in
a bench child's process only (bench.child's "experiments"), so its effect is measured
beside the unchanged pipeline in the same bench run. None of them is in the product.

- gil_switch_1ms, gil_switch_0_2ms: the interpreter hands the GIL over every 1 ms or
  0.2 ms instead of 5 ms. A catch-up's per-player step spends most of its time waiting
  for state answers (Beam logs gets of 10-30 ms each under load); an answer read by the
  harness's gRPC thread may wait for a busy DoFn thread to let go of the GIL.
  Measured (`python -m bench.run --only experiments --experiments`, 2026-12-04 22:10,
  bench/results/20261204T221027Z-default.json; 15,236 events, every run exact): Prism
  2,017 events/s at 5 ms, 1,824 at 1 ms, 1,615 at 0.2 ms; Flink p2 1,942 and 1,905.
  Less time is spent waiting on state (77% -> 70% -> 60%), more CPU per event (0.7 ->
  0.8 -> 0.9 ms), and the whole is slower: the wait is not the GIL's. Not adopted.

(Two earlier ones are in the product now: a bundle's state writes sent before waiting
for any, pipeline.runtime.beam_patches 4., and the SDK harness's state cache on Flink.)
"""


def gil_switch_1ms():
    import sys

    sys.setswitchinterval(0.001)


def gil_switch_0_2ms():
    import sys

    sys.setswitchinterval(0.0002)


EXPERIMENTS = {
    "gil_switch_1ms": gil_switch_1ms,
    "gil_switch_0_2ms": gil_switch_0_2ms,
}


def apply(name: str):
    EXPERIMENTS[name]()
