"""Bench item 6: ParseEnrichedEvents' own work against the SDK's transform, and the
dead-letter path against the good path, over the same generated lines."""

import time

from pipeline.apps.simulator import SimulationSettings, simulate
from pipeline.rules.observations import EnrichedRecord
from pipeline.transforms.parse_events import _ParseLineFn


def bad_versions(good: bytes, kind: int) -> bytes:
    """The simulator's five kinds of malformed line, made from a good one."""
    text = good.decode("utf-8")
    if kind == 0:
        return text.rsplit("\t", 1)[0].encode()  # 130 fields
    if kind == 1:
        return (text + "\textra").encode()  # 132 fields
    if kind == 2:
        return text.replace('"data":[', '"data":[{', 1).encode()  # invalid JSON in contexts
    if kind == 3:
        return b"\xff\xfe" + good[2:]  # not UTF-8
    return text.replace('"user_id":"', '"user_id":null,"x":"', 1).encode()  # null user_id


def _rate(function, items) -> float:
    started = time.perf_counter()
    for item in items:
        function(item)
    return len(items) / (time.perf_counter() - started)


def measure(lines: int) -> dict:
    stream = simulate(
        SimulationSettings(seed=6, players=max(50, lines // 40), duration_secs=1800, malformed_share=0)
    )
    good = [line for line in stream.lines[:lines] if b'"user_id":"' in line]  # events with a level context
    others = [line for line in stream.lines[:lines] if b'"user_id":"' not in line]
    bad = [bad_versions(line, n % 5) for n, line in enumerate(good)]
    parse_fn = _ParseLineFn("collector_tstamp", count_per_bundle=True)  # as in a backfill
    parse_fn.start_bundle()  # one long bundle: its counters are added up, never reported

    def parse(line):
        list(parse_fn.process(EnrichedRecord("bench:1", line)))

    from snowplow_analytics_sdk.event_transformer import transform

    def sdk(line):
        transform(line.decode("utf-8"))

    # Interleaved twice, so a burst of load elsewhere on the machine hits both sides.
    parse_rates, sdk_rates, bad_rates = [], [], []
    for _ in range(2):
        sdk_rates.append(_rate(sdk, good + others))
        parse_rates.append(_rate(parse, good + others))
        bad_rates.append(_rate(parse, bad))
    parse_rate, sdk_rate, bad_rate = max(parse_rates), max(sdk_rates), max(bad_rates)
    return {
        "lines": len(good) + len(others),
        "parse_lines_per_s": parse_rate,
        "sdk_transform_lines_per_s": sdk_rate,
        "vs_sdk_transform": parse_rate / sdk_rate,
        "dead_letter_lines_per_s": bad_rate,
        "dead_letter_slowdown": parse_rate / bad_rate,
    }
