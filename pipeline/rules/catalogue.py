"""The level catalogue: CodeCombat's campaign, its levels in the order players meet them
(rules/data/levels.json). The simulator plays it; the dashboard draws levels in this order,
so a crowd before a hard level shows as a bump. Plain Python, no Beam."""

import json
from importlib import resources


def campaign_levels() -> list[str]:
    """The level slugs in campaign order."""
    text = resources.files("pipeline.rules").joinpath("data/levels.json").read_text(encoding="utf-8")
    return json.loads(text)["levels"]
