"""PublishOutputs: everything the pipeline publishes, in its commit order.

    counter updates ─► WriteDynamoDB ──────┐
    snapshots ───────► WriteSnapshots ─────┼─► (watermark) ─► CommitCheckpoints
    dead letters ────► WriteDeadLetters ───┘                  (progress table, last)

The three writers run side by side; the checkpoint of instant C is written only once
all of them have written everything up to C (pipeline.sinks.commit), so a restart from
C never misses a value, a snapshot or a dead-letter window. The same stage serves a run
without DynamoDB: then there is no checkpoint, and nothing to commit.
"""

import apache_beam as beam

from pipeline.aws import ClientFactory
from pipeline.rules.ledger import Checkpoint
from pipeline.sinks.commit import CommitCheckpoints
from pipeline.sinks.dead_letters import WriteDeadLetters
from pipeline.sinks.dynamodb import WriteCounterUpdates
from pipeline.sinks.snapshots import WriteSnapshots


class PublishOutputs(beam.PTransform):
    """{"updates", "snapshots", "checkpoints", "dead_letters"} -> the tables and objects.
    Returns {writer name: what it wrote}, each element timestamped at its instant."""

    def __init__(
        self,
        *,
        window_secs: int,
        snapshot_path: str | None = None,
        dead_letter_path: str | None = None,
        dynamodb: dict | None = None,
        resume_from: Checkpoint | None = None,
        s3: ClientFactory | None = None,
    ):
        """`dynamodb`: None, or the tables' settings (region, endpoint_url, level_table,
        transitions_table, progress_table); `s3`: the client for s3:// paths."""
        super().__init__()
        self._window_secs = window_secs
        self._snapshot_path = snapshot_path
        self._dead_letter_path = dead_letter_path
        self._dynamodb = dynamodb
        self._resume_from = resume_from
        self._s3 = s3

    def expand(self, outputs):
        written = {}
        tables = self._dynamodb
        if tables is not None:
            written["Values"] = outputs["updates"] | "WriteDynamoDB" >> WriteCounterUpdates(
                tables["region"],
                endpoint_url=tables["endpoint_url"],
                level_table=tables["level_table"],
                transitions_table=tables["transitions_table"],
            )
        if self._snapshot_path:
            written["Snapshots"] = outputs["snapshots"] | "WriteSnapshots" >> WriteSnapshots(
                self._snapshot_path, self._window_secs, self._s3
            )
        if self._dead_letter_path:
            written["DeadLetters"] = outputs["dead_letters"] | "WriteDeadLetters" >> WriteDeadLetters(
                self._dead_letter_path,
                self._window_secs,
                after_ms=None if self._resume_from is None else self._resume_from.as_of_ms,
                s3=self._s3,
            )
        if tables is not None:
            outputs["checkpoints"] | "CommitCheckpoints" >> CommitCheckpoints(
                tables["region"], tables["endpoint_url"], tables["progress_table"], written_before=written
            )
        return written
