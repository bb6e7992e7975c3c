"""The bench's probes wrap pipeline functions by name (bench.probes): a wrapper that no
longer takes what the function it replaces takes fails every call of a measured run
(it did once, when publish_snapshot gained its S3 client)."""

import inspect

from bench import probes
from pipeline.sinks import dynamodb, snapshots
from pipeline.sources import kinesis
from pipeline.transforms import keep_ledger

WRAPPED = [
    (dynamodb, "write_item"),
    (snapshots, "publish_snapshot"),
    (keep_ledger, "advance_ledger"),
    (kinesis._ReadShardsFn, "_output"),
]


def test_each_probe_takes_every_argument_the_function_it_wraps_takes(monkeypatch):
    originals = {}
    for owner, name in WRAPPED:
        originals[(owner, name)] = getattr(owner, name)
        monkeypatch.setattr(owner, name, getattr(owner, name))  # put back after the test
    probes.install()
    for (owner, name), original in originals.items():
        probe = getattr(owner, name)
        assert probe is not original, f"{name} was not probed"
        parameters = inspect.signature(original).parameters.values()
        positional = [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
        inspect.signature(probe).bind(*positional)  # TypeError when the probe takes fewer
