"""One measured run in a fresh process: `python -m bench.child KIND JSON_ARGS`.

Prints one JSON line: the seconds the pipeline itself took (imports excluded), the
process's peak resident memory, and what the kind records. Run by bench.run, so that
every pipeline starts from the same clean interpreter.

Arguments of kind "main" (pipeline.main's run):
- "argv": pipeline.main's flags;
- "probes": log when each output was written and how long records waited (bench.probes);
- "stages": time every fused stage from the SDK harness (bench.stages);
- "stop_file": when this file appears, stop the pipeline as Ctrl-C does (cancel) and
  report: how a live run, which never ends by itself, is ended;
- "experiments": names of changes to Beam or the pipeline to measure (bench.experiments),
  applied in this process only.
"""

import json
import logging
import os
import resource
import signal
import sys
import threading
import time


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stop_when(path: str, stopped: threading.Event):
    """Sends this process SIGINT (pipeline.main then cancels the job) once `path` exists."""

    def watch():
        while not os.path.exists(path):
            time.sleep(0.2)
        stopped.set()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True).start()


def run_main(args: dict) -> dict:
    from pipeline.main import run

    if args.get("probes"):
        from bench import probes

        probes.install()
    if args.get("stages"):
        from bench import stages

        stages.install()
    for name in args.get("experiments", ()):
        from bench import experiments

        experiments.apply(name)
    stopped = threading.Event()
    if args.get("stop_file"):
        _stop_when(args["stop_file"], stopped)
    started = time.perf_counter()
    try:
        run(args["argv"])
    except (SystemExit, KeyboardInterrupt):
        if not stopped.is_set():
            raise
    result = {
        "seconds": time.perf_counter() - started,
        "started_at": time.time() - (time.perf_counter() - started),
        "cancelled": stopped.is_set(),
    }
    if args.get("probes"):
        result.update(probes.report())
    if args.get("stages"):
        result["stages"] = stages.report()
    return result


def run_baseline(args: dict) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from bench.baseline import build

    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        build(pipeline, args["input"], args["output"])
    return {"seconds": time.perf_counter() - started}


KINDS = {"main": run_main, "baseline": run_baseline}

if __name__ == "__main__":
    if os.environ.get("BENCH_CHILD_LOG"):  # the engine's own log, to look into a run
        logging.basicConfig(filename=os.environ["BENCH_CHILD_LOG"], level=logging.INFO)
    else:
        logging.getLogger().setLevel(logging.ERROR)
    kind, raw_args = sys.argv[1], json.loads(sys.argv[2])
    result = KINDS[kind](raw_args)
    result["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(result))
