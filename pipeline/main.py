"""Entry point: parse and check the options, build the pipeline, run it.

python -m pipeline.main --input 'events/*.tsv' --snapshot_path out/
"""

import logging
import sys
from typing import NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.ledger import Checkpoint
from pipeline.options import LevelAnalyticsOptions, unknown_flags
from pipeline.sinks.dead_letters import WriteDeadLetters
from pipeline.sinks.dynamodb import WriteCounterUpdates, create_tables, default_client, read_checkpoint
from pipeline.sinks.snapshots import WriteSnapshots
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
    ledger = interval_sums | "KeepLedger" >> KeepLedger(opts.update_secs, opts.window_secs, resume_from)
    snapshots = ledger[KeepLedger.SNAPSHOTS]
    dead_letters = (
        parsed[ParseEnrichedEvents.DEAD_LETTERS],
        tracked[TrackPlayerLevels.LATE],
        *source_dead_letters,
    ) | "AllDeadLetters" >> beam.Flatten()

    if opts.snapshot_path:
        snapshots | "WriteSnapshots" >> WriteSnapshots(opts.snapshot_path, opts.window_secs)
    if opts.write_dynamodb:
        ledger[KeepLedger.UPDATES] | "WriteDynamoDB" >> WriteCounterUpdates(
            opts.aws_region,
            endpoint_url=opts.aws_endpoint_url,
            level_table=opts.level_table,
            transitions_table=opts.transitions_table,
            progress_table=opts.progress_table,
        )
    if opts.dead_letter_path:
        dead_letters | "WriteDeadLetters" >> WriteDeadLetters(opts.dead_letter_path, opts.window_secs)
    return PipelineOutputs(transitions, interval_sums, snapshots, ledger[KeepLedger.UPDATES], dead_letters)


def parse_options(argv) -> PipelineOptions:
    """Options from the command line; exits with a message saying what to change."""
    unknown = unknown_flags(argv)
    if unknown:
        sys.exit(f"error: unknown or malformed arguments {unknown}; see --help for the flags.")
    options = PipelineOptions(argv)
    errors = options.view_as(LevelAnalyticsOptions).validation_errors()
    if errors:
        sys.exit("error: " + "\n       ".join(errors))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    if options.view_as(LevelAnalyticsOptions).stream_name:
        standard.streaming = True
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
    resume_from = prepare_restart(options)
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, options, resume_from=resume_from)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    run()
