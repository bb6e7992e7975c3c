"""Entry point: parse and check the options, build the pipeline, run it.

python -m pipeline.main --input 'events/*.tsv' --snapshot_path out/
"""

import logging
import os
import signal
import sys
import threading
import time
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options, StandardOptions
from apache_beam.runners.runner import PipelineState

from pipeline import aws
from pipeline.aws import ClientFactory
from pipeline.rules.ledger import Checkpoint
from pipeline.rules.positions import LATEST, TRIM_HORIZON, parse_initial_position, pinned, restart_position
from pipeline.rules.snapshot_format import figures_line
from pipeline.rules.times import iso_utc
from pipeline.runtime.allocator import TrimmedHeap, limit_arenas
from pipeline.runtime.engines import choose_engine, engine_errors, runner_name
from pipeline.runtime.flink import apply_runner_defaults, runner_option_errors  # declares the Flink flags
from pipeline.runtime.flink_metrics import live_figures
from pipeline.runtime.options import LevelAnalyticsOptions, unknown_flags
from pipeline.runtime.preflight import missing_resources
from pipeline.runtime.run_status import STATUS_OBJECT, RunStatus
from pipeline.sinks.dynamodb import (
    claim_settings,
    claim_start,
    create_tables,
    default_client,
    dynamodb_client_factory,
    read_checkpoint,
)
from pipeline.sinks.objects import join_path, write_object
from pipeline.sinks.publish import PublishOutputs
from pipeline.sources.files import ReadEnrichedFiles, ReadProgress
from pipeline.sources.kinesis import ReadKinesisRecords
from pipeline.transforms.count_intervals import CountPerInterval
from pipeline.transforms.keep_ledger import KeepLedger
from pipeline.transforms.parse_events import ParseEnrichedEvents
from pipeline.transforms.track_players import TrackPlayerLevels

_LOG = logging.getLogger(__name__)
# The flags that shape the numbers: the tables and history of one set are of one value each.
NUMBER_SETTINGS = ("timeout_secs", "window_secs", "update_secs", "event_time_field")


class PipelineOutputs(NamedTuple):
    transitions: beam.PCollection
    interval_sums: beam.PCollection
    snapshots: beam.PCollection
    counter_updates: beam.PCollection
    checkpoints: beam.PCollection
    dead_letters: beam.PCollection


def build_pipeline(
    pipeline,
    options: PipelineOptions,
    records: beam.PCollection | None = None,
    resume_from: Checkpoint | None = None,
):
    """Wire the stages. `records` (EnrichedRecord) replaces the source, for tests;
    `resume_from` is the committed checkpoint a restarted pipeline continues from."""
    opts = options.view_as(LevelAnalyticsOptions)
    source_dead_letters = []
    if records is None and opts.stream_name:
        read = pipeline | "ReadKinesis" >> ReadKinesisRecords(
            opts.stream_name,
            opts.aws_region,
            endpoint_url=opts.aws_endpoint_url,
            initial_position=opts.initial_position,
            max_out_of_orderness_secs=opts.max_out_of_orderness_secs,
            idle_shard_secs=opts.idle_shard_secs,
            max_records=opts.max_records,
            stop_when_idle_secs=opts.stop_when_idle_secs,
            event_time_field=opts.event_time_field,
        )
        records = read[ReadKinesisRecords.RECORDS]
        source_dead_letters.append(read[ReadKinesisRecords.LATE])
    elif records is None:
        records = pipeline | "ReadInput" >> ReadEnrichedFiles(opts.input)
    parsed = records | "ParseEvents" >> ParseEnrichedEvents(opts.event_time_field)
    tracked = parsed[ParseEnrichedEvents.OBSERVATIONS] | "TrackPlayers" >> TrackPlayerLevels(
        opts.timeout_secs
    )
    transitions = tracked[TrackPlayerLevels.TRANSITIONS]
    interval_sums = transitions | "CountPerInterval" >> CountPerInterval(opts.update_secs)
    ledger = interval_sums | "KeepLedger" >> KeepLedger(
        opts.update_secs, opts.window_secs, resume_from, opts.timeout_secs
    )
    dead_letters = (
        parsed[ParseEnrichedEvents.DEAD_LETTERS],
        tracked[TrackPlayerLevels.LATE],
        *source_dead_letters,
    ) | "AllDeadLetters" >> beam.Flatten()
    outputs = PipelineOutputs(
        transitions,
        interval_sums,
        ledger[KeepLedger.SNAPSHOTS],
        ledger[KeepLedger.UPDATES],
        ledger[KeepLedger.CHECKPOINTS],
        dead_letters,
    )
    tables = None
    if opts.write_dynamodb:
        tables = {
            "region": opts.aws_region,
            "endpoint_url": opts.aws_endpoint_url,
            "level_table": opts.level_table,
            "transitions_table": opts.transitions_table,
            "progress_table": opts.progress_table,
        }
    {
        "updates": outputs.counter_updates,
        "snapshots": outputs.snapshots,
        "checkpoints": outputs.checkpoints,
        "dead_letters": outputs.dead_letters,
    } | "Publish" >> PublishOutputs(
        window_secs=opts.window_secs,
        snapshot_path=opts.snapshot_path,
        dead_letter_path=opts.dead_letter_path,
        dynamodb=tables,
        resume_from=resume_from,
        s3=s3_client_factory(options),
    )
    return outputs


def parse_options(argv) -> PipelineOptions:
    """Options from the command line; exits with a message saying what to change."""
    unknown = unknown_flags(argv)
    if unknown:
        sys.exit(f"error: unknown or malformed arguments {unknown}; see --help for the flags.")
    options = PipelineOptions(argv)
    opts = options.view_as(LevelAnalyticsOptions)
    streaming = bool(opts.stream_name) or bool(options.view_as(StandardOptions).streaming)
    errors = opts.validation_errors()
    errors += engine_errors(options, streaming)
    errors += runner_option_errors(options)
    if errors:
        sys.exit("error: " + "\n       ".join(errors))
    s3 = options.view_as(S3Options)
    if opts.aws_endpoint_url and not s3.s3_endpoint_url:
        s3.s3_endpoint_url = opts.aws_endpoint_url  # snapshots and dead letters on s3:// too
    if not s3.s3_region_name:
        s3.s3_region_name = opts.aws_region
    options.view_as(StandardOptions).streaming = streaming
    choose_engine(options, streaming)
    apply_runner_defaults(options)  # after streaming is known
    return options


def prepare_restart(options: PipelineOptions) -> Checkpoint | None:
    """With DynamoDB: create the tables if asked, stop if they were written with other
    NUMBER_SETTINGS, read the committed checkpoint, and re-read the stream from early
    enough to rebuild every player's state as of it."""
    opts = options.view_as(LevelAnalyticsOptions)
    if not opts.write_dynamodb:
        return None
    client = default_client(opts.aws_region, opts.aws_endpoint_url)
    if opts.create_tables:
        create_tables(client, opts.level_table, opts.transitions_table, opts.progress_table)
    settings = {name: getattr(opts, name) for name in NUMBER_SETTINGS}
    stored = claim_settings(client, opts.progress_table, settings)
    if stored is not None:
        was = " ".join(f"--{name}={value}" for name, value in sorted(stored.items()))
        now = " ".join(
            f"--{name}={settings.get(name)}" for name in sorted(stored) if settings.get(name) != stored[name]
        )
        sys.exit(
            f"error: the tables of progress table {opts.progress_table!r} were written with {was}; "
            f"this run has {now}. Restart with the flags they were written with, or start over on "
            "new tables (--level_table, --transitions_table, --progress_table) and a new --snapshot_path."
        )
    checkpoint = read_checkpoint(client, opts.progress_table)
    if opts.stream_name:
        # Tables with a checkpoint but no stored start (written before starts were
        # stored): their first start is unknown, so nothing bounds the rebuild.
        asked = opts.initial_position
        first = TRIM_HORIZON if checkpoint is not None else pinned(asked, int(time.time() * 1000))
        first = claim_start(client, opts.progress_table, first)
        if parse_initial_position(asked).kind != LATEST and asked != first:
            logging.warning(
                "--initial_position=%s ignored: these tables were first written from %s; "
                "use new tables to count from elsewhere",
                asked,
                first,
            )
        rebuild_ms = (opts.timeout_secs + opts.max_out_of_orderness_secs) * 1000
        opts.initial_position = restart_position(first, checkpoint and checkpoint.as_of_ms, rebuild_ms)
        if checkpoint is not None:
            logging.warning(
                "resuming after %s: re-reading from %s", iso_utc(checkpoint.as_of_ms), opts.initial_position
            )
    return checkpoint


def run(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        LevelAnalyticsOptions(["--help"])  # argparse prints every flag with its default
    options = parse_options(argv)
    FileSystems.set_options(options)  # for paths on other filesystems Beam knows
    opts = options.view_as(LevelAnalyticsOptions)
    s3 = s3_client_factory(options)
    problems = missing_resources(
        opts,
        kinesis=ClientFactory("kinesis", opts.aws_region, opts.aws_endpoint_url),
        s3=s3,
        dynamodb=dynamodb_client_factory(opts.aws_region, opts.aws_endpoint_url),
    )
    if problems:
        sys.exit("error: " + "; ".join(problems) + ".")
    resume_from = prepare_restart(options)
    # A stream's process runs for days: keep glibc's heap from holding what it freed.
    heap = None
    if opts.stream_name:
        limit_arenas()
        heap = TrimmedHeap().start()
    status = RunStatus(
        _status_writer(opts.snapshot_path, s3),
        runner_name(options),
        opts.update_secs,
        other_totals=live_figures(options),  # Flink's REST API, before the job server starts
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options, resume_from=resume_from)
    # A bounded replay shows on stderr what it has read as it goes (pipeline.sources.files).
    progress = ReadProgress(opts.input).start() if opts.input and not opts.stream_name else None
    started = time.monotonic()
    result = pipeline.run()
    # A stream runs until cancelled: its figures are published while it runs.
    status.follow(result, on_error=lambda error: _LOG.warning("pipeline status not published: %s", error))
    try:
        state = _wait_unless_interrupted(
            result,
            status,
            committed_ms=lambda: _committed_ms(opts),
            give_ups_since=started if runner_name(options) == "PrismRunner" else None,
        )
    finally:
        status.stop()
        if heap is not None:
            heap.stop()
        if progress is not None:
            progress.stop()
    summary = status.publish(result, str(state), finished=True, committed_ms=_committed_ms(opts))
    print(
        f"{state}: {figures_line(summary)}"
        + ("" if summary["committed_until"] is None else f"; committed up to {summary['committed_until']}"),
        file=sys.stderr,
    )
    if state != PipelineState.DONE:
        sys.exit(f"error: the pipeline ended {state}")
    return result


# How a stream is stopped: Ctrl-C, or a supervisor's SIGTERM (systemd, docker stop,
# Kubernetes). SIGTERM's default would end this process alone, without its exit handlers:
# the job server Beam started for Flink (a JVM) was seen left running.
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


# A step that gives up (AwsCallFailed) fails the job; once in about 25 CI runs on Prism the
# job stayed RUNNING after one instead, with nothing left to end it. Prism's workers run in
# this process (LOOPBACK), so the give-up is seen here (`give_ups_since`): a job still
# running this long after one is stopped as SIGTERM stops it, saying why. Not on Flink:
# its restart strategy may retry the job, as configured.
GIVE_UP_GRACE_SECS = 30.0


def _wait_unless_interrupted(result, status: RunStatus, committed_ms, give_ups_since: float | None = None):
    """The job's end state; on Ctrl-C or SIGTERM, cancel the job and exit (Beam's exit
    handlers then stop the engine it started). gRPC may turn the interrupt into a
    cancelled or closed call (seen on Flink), so the signal itself, not the exception's
    type, says the run was stopped. With `give_ups_since` (a time.monotonic()), a job
    still running GIVE_UP_GRACE_SECS after a step gave up is stopped too."""
    received, stuck, ended = [], [], threading.Event()
    # Signals are set on the main thread only; an ignored signal stays ignored.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    watched = [s for s, handler in previous.items() if on_main_thread and handler is not signal.SIG_IGN]

    def note_then_interrupt(signum, frame):
        received.append(signum)
        if callable(previous[signum]):  # Beam's SIGINT handler on Flink: it stops the job server first
            previous[signum](signum, frame)
        raise KeyboardInterrupt

    for signum in watched:
        signal.signal(signum, note_then_interrupt)
    if give_ups_since is not None and signal.SIGTERM in watched:
        threading.Thread(
            target=_stop_if_running_after_a_give_up, args=(give_ups_since, ended, stuck), daemon=True
        ).start()
    try:
        return result.wait_until_finish()
    except BaseException as error:
        if not (isinstance(error, KeyboardInterrupt) or received):
            raise
        _stop_quietly(result, status, committed_ms)
        if stuck:
            sys.exit(
                f"error: AwsCallFailed: {stuck[0]}\nThe engine had not ended the job "
                f"{GIVE_UP_GRACE_SECS:g} s later: cancelled. A restart with the same flags resumes "
                "from the last checkpoint."
            )
        how = STOP_SIGNALS[received[0]] if received else STOP_SIGNALS[signal.SIGINT]
        sys.exit(f"stopped ({how}); a restart with the same flags resumes from the last checkpoint")
    finally:
        ended.set()
        for signum in watched:
            signal.signal(signum, previous[signum])


def _stop_if_running_after_a_give_up(since: float, ended: threading.Event, stuck: list) -> None:
    while not ended.wait(1.0):
        failure = aws.gave_up_since(
            since, not_on_threads=(RunStatus.THREAD_NAME,)
        )  # not the run's own status
        if failure is None:
            continue
        if not ended.wait(GIVE_UP_GRACE_SECS):
            stuck.append(failure)
            os.kill(os.getpid(), signal.SIGTERM)
        return


def _stop_quietly(result, status: RunStatus, committed_ms):
    """Cancel the job and say so in the status. The engine shares our process group, so
    it may be gone already: the SDK's threads then fail on their connections, which is
    the expected end here, not news for the terminal."""
    threading.excepthook = lambda args: None
    logging.getLogger("apache_beam.runners.worker").setLevel(logging.CRITICAL)  # their logged errors too
    status.stop()
    for step in (
        result.cancel,
        lambda: status.publish(result, "CANCELLED", finished=True, committed_ms=committed_ms()),
    ):
        try:
            step()
        except Exception as error:  # noqa: BLE001 - best effort on the way out
            _LOG.info("while stopping: %s", error)


def s3_client_factory(options: PipelineOptions) -> ClientFactory:
    """The client for s3:// snapshots, dead letters and the status object, made from Beam's
    S3 options as Beam's own S3 filesystem makes its client (so --input on s3:// and the
    outputs use the same keys): --s3_region_name and --s3_endpoint_url (which
    parse_options fills from --aws_region and --aws_endpoint_url), and, when given,
    --s3_access_key_id, --s3_secret_access_key, --s3_session_token, --s3_verify and
    --s3_disable_ssl."""
    s3 = options.view_as(S3Options)
    given = {
        "aws_access_key_id": s3.s3_access_key_id,
        "aws_secret_access_key": s3.s3_secret_access_key,
        "aws_session_token": s3.s3_session_token,
        "verify": s3.s3_verify,
        "use_ssl": False if s3.s3_disable_ssl else None,
    }
    client_args = {name: value for name, value in given.items() if value is not None}
    return ClientFactory("s3", s3.s3_region_name, s3.s3_endpoint_url, client_args)


def _status_writer(snapshot_path: str | None, s3: ClientFactory):
    if not snapshot_path:
        return lambda body: None
    path = join_path(snapshot_path, STATUS_OBJECT)
    return lambda body: write_object(path, body, s3)


def _committed_ms(opts) -> int | None:
    if not opts.write_dynamodb:
        return None
    try:
        client = default_client(opts.aws_region, opts.aws_endpoint_url)
        checkpoint = read_checkpoint(client, opts.progress_table)
    except Exception as error:  # noqa: BLE001 - the closing summary only; the run itself is done
        _LOG.warning("the committed checkpoint could not be read for the summary: %s", error)
        return None
    return None if checkpoint is None else checkpoint.as_of_ms


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    run()
