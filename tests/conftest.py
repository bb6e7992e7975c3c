import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # so tests can import reference_model


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture
def read_snapshot_dir():
    """Reads the history objects of a snapshot directory as {window_end_iso: (levels, transitions)}."""

    def read(root):
        levels_dir = os.path.join(root, "history", "levels")
        result = {}
        for name in sorted(os.listdir(levels_dir)):
            levels = read_json(os.path.join(levels_dir, name))
            transitions = read_json(os.path.join(root, "history", "transitions", name))
            result[name[: -len(".json")]] = (levels, transitions)
        return result

    return read
