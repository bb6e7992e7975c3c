"""Entry point: parse and check the options, build the pipeline, run it.

python -m pipeline.main --input 'events/*.tsv' --snapshot_path out/
"""

import logging
import sys
import time
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options, StandardOptions

from pipeline.ledger import Checkpoint
from pipeline.options import LevelAnalyticsOptions, unknown_flags
from pipeline.run_status import STATUS_OBJECT, counter_totals, run_status, status_bytes
from pipeline.runners import apply_runner_defaults, runner_option_errors  # also declares the Flink flags
from pipeline.sinks.dead_letters import WriteDeadLetters
from pipeline.sinks.dynamodb import WriteCounterUpdates, create_tables, default_client, read_checkpoint
from pipeline.sinks.snapshots import WriteSnapshots, join_path, write_object
from pipeline.snapshots import iso_utc
from pipeline.sources.files import ReadEnrichedFiles
from pipeline.sources.kinesis import ReadKinesisRecords
from pipeline.transforms.count import CountPerInterval, KeepLedger
from pipeline.transforms.parse import ParseEnrichedEvents
from pipeline.transforms.track import TrackPlayerLevels

DEFAULT_RUNNER = "FnApiRunner"  # the DirectRunner's engine, named so no Prism lookup happens


class PipelineOutputs(NamedTuple):
    transitions: beam.PCollection
    interval_sums: beam.PCollection
    snapshots: beam.PCollection
    counter_updates: beam.PCollection
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
    frontiers = None  # a segment run's FRONTIER: only what comes before it is final
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
            stop_when_caught_up=opts.stop_when_caught_up,
            drain_backlog=is_local_runner(options),
            event_time_field=opts.event_time_field,
        )
        records = read[ReadKinesisRecords.RECORDS]
        source_dead_letters.append(read[ReadKinesisRecords.LATE])
        if opts.stop_when_caught_up:
            frontiers = read[ReadKinesisRecords.FRONTIER]
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
    snapshots = ledger[KeepLedger.SNAPSHOTS]
    counter_updates = ledger[KeepLedger.UPDATES]
    if frontiers is not None:
        final = beam.pvalue.AsList(frontiers)
        snapshots = snapshots | "FinalSnapshots" >> beam.Filter(snapshot_is_final, final)
        counter_updates = counter_updates | "FinalUpdates" >> beam.Filter(update_is_final, final)
    dead_letters = (
        parsed[ParseEnrichedEvents.DEAD_LETTERS],
        tracked[TrackPlayerLevels.LATE],
        *source_dead_letters,
    ) | "AllDeadLetters" >> beam.Flatten()

    if opts.snapshot_path and not opts.write_dynamodb:
        snapshots | "WriteSnapshots" >> WriteSnapshots(opts.snapshot_path, opts.window_secs)
    if opts.write_dynamodb:  # publishes the snapshots too, each before its checkpoint
        counter_updates | "WriteDynamoDB" >> WriteCounterUpdates(
            opts.aws_region,
            endpoint_url=opts.aws_endpoint_url,
            level_table=opts.level_table,
            transitions_table=opts.transitions_table,
            progress_table=opts.progress_table,
            snapshot_path=opts.snapshot_path,
            window_secs=opts.window_secs,
        )
    if opts.dead_letter_path:
        dead_letters | "WriteDeadLetters" >> WriteDeadLetters(
            opts.dead_letter_path,
            opts.window_secs,
            after_ms=None if resume_from is None else resume_from.as_of_ms,
            final_before=frontiers,
        )
    return PipelineOutputs(transitions, interval_sums, snapshots, counter_updates, dead_letters)


def is_local_runner(options: PipelineOptions) -> bool:
    """Beam's in-process runners, whose watermark only moves when a source ends."""
    runner = options.view_as(StandardOptions).runner or DEFAULT_RUNNER
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1] in ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner")


def snapshot_is_final(snapshot, frontiers) -> bool:
    return bool(frontiers) and snapshot.window_end_ms <= min(frontiers)


def update_is_final(update, frontiers) -> bool:
    return bool(frontiers) and update.as_of_ms <= min(frontiers)


def parse_options(argv) -> PipelineOptions:
    """Options from the command line; exits with a message saying what to change."""
    unknown = unknown_flags(argv)
    if unknown:
        sys.exit(f"error: unknown or malformed arguments {unknown}; see --help for the flags.")
    options = PipelineOptions(argv)
    errors = options.view_as(LevelAnalyticsOptions).validation_errors()
    errors += runner_option_errors(options)
    if errors:
        sys.exit("error: " + "\n       ".join(errors))
    opts = options.view_as(LevelAnalyticsOptions)
    s3 = options.view_as(S3Options)
    if opts.aws_endpoint_url and not s3.s3_endpoint_url:
        s3.s3_endpoint_url = opts.aws_endpoint_url  # snapshots and dead letters on s3:// too
    if not s3.s3_region_name:
        s3.s3_region_name = opts.aws_region
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    if options.view_as(LevelAnalyticsOptions).stream_name:
        standard.streaming = True
    apply_runner_defaults(options)  # after streaming is known
    return options


def prepare_restart(options: PipelineOptions) -> Checkpoint | None:
    """With DynamoDB: create the tables if asked, read the committed checkpoint, and
    re-read the stream from early enough to rebuild every player's state as of it."""
    opts = options.view_as(LevelAnalyticsOptions)
    if not opts.write_dynamodb:
        return None
    client = default_client(opts.aws_region, opts.aws_endpoint_url)
    if opts.create_tables:
        create_tables(client, opts.level_table, opts.transitions_table, opts.progress_table)
    checkpoint = read_checkpoint(client, opts.progress_table)
    if checkpoint is not None and opts.stream_name:
        rebuild_from_ms = checkpoint.as_of_ms - (opts.timeout_secs + opts.max_out_of_orderness_secs) * 1000
        opts.initial_position = f"AT_TIMESTAMP:{iso_utc(rebuild_from_ms)}"
        logging.warning(
            "resuming after %s: re-reading from %s", iso_utc(checkpoint.as_of_ms), opts.initial_position
        )
    return checkpoint


def run(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        LevelAnalyticsOptions(["--help"])  # argparse prints every flag with its default
    options = parse_options(argv)
    FileSystems.set_options(options)  # this process writes to s3:// too (the status object)
    resume_from = prepare_restart(options)
    started_ms = int(time.time() * 1000)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options, resume_from=resume_from)
    result = pipeline.run()
    result.wait_until_finish()
    publish_run_status(options, result, started_ms)
    return result


def publish_run_status(options: PipelineOptions, result, started_ms: int):
    """pipeline_status.json beside the snapshots, and one summary line on stderr."""
    opts = options.view_as(LevelAnalyticsOptions)
    committed = None
    if opts.write_dynamodb:
        checkpoint = read_checkpoint(
            default_client(opts.aws_region, opts.aws_endpoint_url), opts.progress_table
        )
        committed = None if checkpoint is None else checkpoint.as_of_ms
    status = run_status(counter_totals(result), started_ms, int(time.time() * 1000), committed)
    if opts.snapshot_path:
        write_object(join_path(opts.snapshot_path, STATUS_OBJECT), status_bytes(status))
    print(
        f"read {status['records_read']} records, {status['transitions']} transitions, "
        f"{sum(status['dead_letters'].values())} dead letters, {status['dynamodb_writes']} DynamoDB writes"
        + ("" if committed is None else f"; committed up to {status['committed_until']}"),
        file=sys.stderr,
    )


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    run()
