"""ReadEnrichedFiles: the bounded source, for replaying archived enriched events."""

import apache_beam as beam
from apache_beam.io import fileio

from pipeline.rules.observations import EnrichedRecord


def records_of(readable_file):
    """Each line of one file as raw bytes (decoding is the parser's job, so a
    non-UTF-8 line becomes a dead letter instead of a crash), with its position."""
    path = readable_file.metadata.path
    with readable_file.open() as handle:
        for number, line in enumerate(handle, start=1):
            yield EnrichedRecord(f"{path}:{number}", line.rstrip(b"\r\n"))


class ReadEnrichedFiles(beam.PTransform):
    """A glob of files of enriched TSV lines (local, s3://, gzip by extension) ->
    EnrichedRecord."""

    def __init__(self, file_pattern: str):
        super().__init__()
        self._pattern = file_pattern

    def expand(self, pipeline):
        return (
            pipeline
            | "MatchInputFiles" >> fileio.MatchFiles(self._pattern, empty_match_treatment="DISALLOW")
            | "OpenInputFiles" >> fileio.ReadMatches()
            | "ReadLines" >> beam.FlatMap(records_of)
        )
