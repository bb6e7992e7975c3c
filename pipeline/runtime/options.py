"""Command-line options of the pipeline, validated before anything runs."""

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.rules.observations import DEFAULT_EVENT_TIME_FIELD, EVENT_TIME_FIELDS
from pipeline.rules.positions import parse_initial_position
from pipeline.rules.tables import LEVEL_TABLE, PROGRESS_TABLE, TRANSITIONS_TABLE


class LevelAnalyticsOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("level analytics")
        group.add_argument(
            "--input",
            default=None,
            help="Glob of files of Snowplow enriched TSV lines (local or s3://): a bounded "
            "replay ('backfill'). Default: none.",
        )
        group.add_argument(
            "--snapshot_path",
            default=None,
            help="Where the per-window JSON snapshots go: a directory or s3://bucket/prefix. "
            "Default: none (no snapshots).",
        )
        group.add_argument(
            "--dead_letter_path",
            default=None,
            help="Where bad records go as JSON lines with their reason: a directory or "
            "s3://bucket/prefix. Default: none (they are only counted).",
        )
        group.add_argument(
            "--timeout_secs",
            type=int,
            default=300,
            help="A player with no observation for this long leaves the game. Default: 300.",
        )
        group.add_argument(
            "--window_secs",
            type=int,
            default=60,
            help="Length of the epoch-aligned snapshot windows. Default: 60.",
        )
        group.add_argument(
            "--update_secs",
            type=int,
            default=5,
            help="Grid of the DynamoDB updates; must divide --window_secs. Default: 5.",
        )
        group.add_argument(
            "--event_time_field",
            default=DEFAULT_EVENT_TIME_FIELD,
            choices=EVENT_TIME_FIELDS,
            help="Which timestamp is the event time (collector_tstamp when the chosen one "
            f"is empty). Default: {DEFAULT_EVENT_TIME_FIELD}.",
        )

        stream = parser.add_argument_group("streaming from Kinesis")
        stream.add_argument(
            "--stream_name",
            default=None,
            help="Kinesis stream of enriched events to read forever (instead of --input). Default: none.",
        )
        stream.add_argument("--aws_region", default="us-east-1", help="AWS region. Default: us-east-1.")
        stream.add_argument(
            "--aws_endpoint_url",
            default=None,
            help="Endpoint for every AWS client (Kinesis, DynamoDB, S3), e.g. moto or LocalStack on "
            "http://127.0.0.1:5000. Default: none (real AWS; credentials from boto3's usual chain).",
        )
        stream.add_argument(
            "--initial_position",
            default="LATEST",
            help="Where to start reading: LATEST, TRIM_HORIZON or AT_TIMESTAMP:<ISO 8601>. Default: LATEST.",
        )
        stream.add_argument(
            "--max_out_of_orderness_secs",
            type=int,
            default=10,
            help="How far behind the latest event time a record may arrive and still count; "
            "later ones are dead-lettered as late. Default: 10.",
        )
        stream.add_argument(
            "--idle_shard_secs",
            type=int,
            default=30,
            help="A caught-up shard silent this long stops holding the watermark back. Default: 30.",
        )
        stream.add_argument(
            "--max_records",
            type=int,
            default=10000,
            help="Records per GetRecords call (1-10000). Default: 10000, the service's maximum "
            "(a backlog is caught up in bigger bundles, with fewer state writes per player).",
        )
        stream.add_argument(
            "--stop_when_idle_secs",
            type=int,
            default=None,
            help="Finish once every shard is caught up and silent this long: every player then times "
            "out and everything is final (tests, replaying a stream that has stopped). Default: off "
            "(run until cancelled).",
        )

        tables = parser.add_argument_group("DynamoDB")
        tables.add_argument(
            "--write_dynamodb",
            action="store_true",
            default=False,
            help="Keep the level-state and transitions tables up to date (every --update_secs), and "
            "resume from the progress table's checkpoint after a restart. Default: off.",
        )
        tables.add_argument("--level_table", default=LEVEL_TABLE, help=f"Default: {LEVEL_TABLE}.")
        tables.add_argument(
            "--transitions_table", default=TRANSITIONS_TABLE, help=f"Default: {TRANSITIONS_TABLE}."
        )
        tables.add_argument(
            "--progress_table",
            default=PROGRESS_TABLE,
            help=f"Where the pipeline records how far it has committed. Default: {PROGRESS_TABLE}.",
        )
        tables.add_argument(
            "--create_tables",
            action="store_true",
            default=False,
            help="Create the three tables (on-demand billing) if they are missing. Default: off.",
        )

    def validation_errors(self) -> list:
        """Every problem with the options, each saying what to change."""
        errors = []
        if not self.input and not self.stream_name:
            errors.append(
                "no input: give --input 'events/*.tsv' (files of enriched TSV lines) or --stream_name (Kinesis)."
            )
        if self.input and self.stream_name:
            errors.append("--input and --stream_name both given: choose one source.")
        if self.stream_name:
            try:
                parse_initial_position(self.initial_position)
            except ValueError as error:
                errors.append(f"--initial_position: {error}")
            if not 1 <= self.max_records <= 10000:
                errors.append(f"--max_records must be between 1 and 10000, not {self.max_records}.")
            for name in ("max_out_of_orderness_secs", "idle_shard_secs"):
                if getattr(self, name) < 0:
                    errors.append(f"--{name} must not be negative.")
            if self.stop_when_idle_secs is not None and self.stop_when_idle_secs <= 0:
                errors.append("--stop_when_idle_secs must be positive (or left out to run forever).")
        elif self.stop_when_idle_secs is not None:
            errors.append("--stop_when_idle_secs applies to --stream_name only.")
        if not (self.snapshot_path or self.dead_letter_path or self.write_dynamodb):
            errors.append(
                "nothing to write: give --snapshot_path (a directory or s3://bucket/prefix) and/or --write_dynamodb."
            )
        for name in ("timeout_secs", "window_secs", "update_secs"):
            if getattr(self, name) <= 0:
                errors.append(f"--{name} must be positive (a number of seconds), not {getattr(self, name)}.")
        if self.window_secs > 0 and self.update_secs > 0 and self.window_secs % self.update_secs:
            errors.append(
                f"--update_secs {self.update_secs} does not divide --window_secs {self.window_secs}: "
                "choose a divisor (for example 5 with 60)."
            )
        return errors


def unknown_flags(argv: list) -> list:
    """The arguments that no declared option knows (Beam only warns on them), among all
    the options classes loaded: Beam's, LevelAnalyticsOptions, and those of
    pipeline.runtime.flink (pipeline.main loads it). Beam's own parser, as it builds it
    for every PipelineOptions, reaches us through get_all_options' public hook."""
    parsers = []
    PipelineOptions(argv).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(argv)
    return unknown
