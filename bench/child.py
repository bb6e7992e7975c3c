"""One measured run in a fresh process: `python -m bench.child KIND JSON_ARGS`.

Prints one JSON line: the seconds the pipeline itself took (imports excluded), the
process's peak resident memory, and what the kind records. Run by bench.run, so that
every pipeline starts from the same clean interpreter.
"""

import json
import logging
import resource
import sys
import threading
import time


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record_dynamodb_writes():
    """Wraps the sink's UpdateItem helper to log (table, as_of_ms, wall time) of every
    write request the pipeline makes. Instrumentation of this process only."""
    from pipeline.sinks import dynamodb

    log, lock, original = [], threading.Lock(), dynamodb.write_item

    def logged(client, write, *args, **kwargs):
        outcome = original(client, write, *args, **kwargs)
        with lock:
            log.append((write.table, write.as_of_ms, time.time(), outcome.retries + 1))
        return outcome

    dynamodb.write_item = logged
    return log


def run_main(args: dict) -> dict:
    from pipeline.main import run

    log = record_dynamodb_writes() if args.get("log_writes") else None
    started = time.perf_counter()
    run(args["argv"])
    result = {
        "seconds": time.perf_counter() - started,
        "started_at": time.time() - (time.perf_counter() - started),
    }
    if log is not None:
        result["writes"] = log
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
    logging.getLogger().setLevel(logging.ERROR)
    kind, raw_args = sys.argv[1], json.loads(sys.argv[2])
    result = KINDS[kind](raw_args)
    result["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(result))
