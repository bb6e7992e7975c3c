"""Command-line options of the pipeline, validated before anything runs."""

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipeline.events import DEFAULT_EVENT_TIME_FIELD, EVENT_TIME_FIELDS


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

    def validation_errors(self) -> list:
        """Every problem with the options, each saying what to change."""
        errors = []
        if not self.input:
            errors.append("no input: give --input 'events/*.tsv' (files of enriched TSV lines).")
        if not (self.snapshot_path or self.dead_letter_path):
            errors.append("nothing to write: give --snapshot_path (a directory or s3://bucket/prefix).")
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
    """The arguments that no option of Beam's or ours knows (Beam only warns on them)."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    return unknown
