"""Builds genuine Snowplow enriched-event TSV lines (131 fields, the SDK's field table).

Used by the simulator and by the tests: every line it makes parses with the
Snowplow Analytics SDK's `transform`.
"""

import json
from typing import Iterable

from pipeline.rules.observations import FIELD_INDEX, FIELD_NAMES
from pipeline.rules.times import format_timestamp_ms

CONTEXTS_SCHEMA = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
UNSTRUCT_SCHEMA = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
LEVEL_CONTEXT_1_0_0 = "iglu:com.codecombat/level_context/jsonschema/1-0-0"
LEVEL_CONTEXT_1_0_1 = "iglu:com.codecombat/level_context/jsonschema/1-0-1"


def level_context(user_id, level_slug, schema: str = LEVEL_CONTEXT_1_0_0, **extra) -> dict:
    data = {"user_id": user_id, "level_slug": level_slug, **extra}
    return {"schema": schema, "data": data}


def enriched_line(
    event_id: str,
    collector_ms: int,
    contexts: Iterable[dict] = (),
    *,
    app_id: str = "codecombat",
    event: str = "unstruct",
    event_name: str = "level_progress",
    dvce_created_ms: int | None = None,
    derived_ms: int | None = None,
    domain_userid: str = "",
) -> str:
    """One enriched event as Snowplow's enrich writes it to the good stream."""
    fields = [""] * len(FIELD_NAMES)

    def put(name, value):
        fields[FIELD_INDEX[name]] = value

    put("app_id", app_id)
    put("platform", "web")
    put("etl_tstamp", format_timestamp_ms(collector_ms + 150))
    put("collector_tstamp", format_timestamp_ms(collector_ms))
    if dvce_created_ms is not None:
        put("dvce_created_tstamp", format_timestamp_ms(dvce_created_ms))
        put("dvce_sent_tstamp", format_timestamp_ms(dvce_created_ms + 40))
    put("event", event)
    put("event_id", event_id)
    put("name_tracker", "cc")
    put("v_tracker", "js-3.24.0")
    put("v_collector", "ssc-3.2.0-kinesis")
    put("v_etl", "snowplow-enrich-kinesis-4.2.0")
    put("user_ipaddress", "10.0.0.x")
    put("domain_userid", domain_userid)
    put("page_url", "https://codecombat.com/play")
    put("page_urlscheme", "https")
    put("page_urlhost", "codecombat.com")
    put("page_urlport", "443")
    put("page_urlpath", "/play")
    contexts = list(contexts)
    if contexts:
        put("contexts", json.dumps({"schema": CONTEXTS_SCHEMA, "data": contexts}, separators=(",", ":")))
    if event == "unstruct":
        unstruct = {
            "schema": UNSTRUCT_SCHEMA,
            "data": {"schema": f"iglu:com.codecombat/{event_name}/jsonschema/1-0-0", "data": {}},
        }
        put("unstruct_event", json.dumps(unstruct, separators=(",", ":")))
        put("event_vendor", "com.codecombat")
        put("event_name", event_name)
        put("event_format", "jsonschema")
        put("event_version", "1-0-0")
    else:
        put("event_vendor", "com.snowplowanalytics.snowplow")
        put("event_name", event)
        put("event_format", "jsonschema")
        put("event_version", "1-0-0")
    put("useragent", "Mozilla/5.0")
    put("br_cookies", "1")
    put("dvce_ismobile", "0")
    put("doc_charset", "UTF-8")
    if derived_ms is None:
        derived_ms = collector_ms if dvce_created_ms is None else dvce_created_ms
    put("derived_tstamp", format_timestamp_ms(derived_ms))
    return "\t".join(fields)
