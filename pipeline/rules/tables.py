"""The DynamoDB tables the pipeline keeps: their default names (the original app's, so
existing readers keep working) and keys. Plain Python, no Beam.

level table        levelId (S) -> playerCount (N), asOf (N), updatedAt (S)
transitions table  transitionLevels (S, "from/to") -> count (N), levelFrom (S), levelTo (S), asOf (N)
progress table     pipeline (S) -> asOf (N), levels (S, JSON), transitionTotals (S, JSON), updatedAt (S)
"""

LEVEL_TABLE = "level-state"
TRANSITIONS_TABLE = "transitions"
PROGRESS_TABLE = "level-analytics-progress"
PIPELINE_NAME = "level-analytics"  # the progress table's key: one item per pipeline

LEVEL_KEY, TRANSITION_KEY, PROGRESS_KEY = "levelId", "transitionLevels", "pipeline"
