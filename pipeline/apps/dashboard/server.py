"""The dashboard's web server (aiohttp): the page, the JSON it uses, and a Server-Sent
Events stream that pushes each new window to every open page.

    GET /                       the page (static/index.html, app.js, style.css, plotly.min.js)
    GET /api/current            the live state: the latest window (level map, flows), players
                                per level now, the pipeline status, staleness, read errors
    GET /api/history?span=1h    over the span (15m, 1h, 1d) before the latest window: the stuck
                                table and the windows (for the replay scrubber); and the last
                                hour's series (total and per level)
    GET /api/window/{end}       one past window's level map and flows, from the history objects
    GET /events                 SSE: "current" (the live state) at connect and at every change,
                                "status" (staleness) every second

The server polls the latest levels object (a conditional GET: a 304 while it has not
changed) every --poll_secs, the level table and the status object every couple of
seconds, and never writes anything. What it sends the browser is built from the
published objects only: no endpoint, credential or path; read errors are reduced to
their error code (the full message goes to the server's log).
"""

import asyncio
import gzip
import importlib.util
import ipaddress
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import NamedTuple

from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.apps.dashboard.model import (
    SERIES_SECS,
    SPANS,
    Transition,
    counts_of,
    live_levels,
    parse_window_end,
    series,
    staleness,
    status_rows,
    stuck_table,
    transitions_of,
    window_view,
)
from pipeline.apps.dashboard.sources import (
    LEVELS_LATEST,
    NOT_MODIFIED,
    STATUS_OBJECT,
    TRANSITIONS_LATEST,
    Fetched,
    History,
    make_clients,
    make_store,
)
from pipeline.apps.published import LevelItem, read_level_table
from pipeline.aws import error_code
from pipeline.rules.catalogue import campaign_levels
from pipeline.rules.tables import LEVEL_TABLE
from pipeline.rules.times import iso_utc

_LOG = logging.getLogger("pipeline.apps.dashboard")
_READ_ERRORS = (ClientError, BotoCoreError, OSError, ValueError)
MAX_BACKOFF_SECS = 30.0

SECURITY_HEADERS = {
    # Scripts only from this server (no inline script, so injected markup could not run);
    # plotly.js sets inline styles, hence 'unsafe-inline' for styles only.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Settings(NamedTuple):
    snapshot_path: str
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    level_table: str = LEVEL_TABLE  # "" = do not read the table
    host: str = "127.0.0.1"
    port: int = 8050
    poll_secs: float = 0.5  # the latest levels object
    table_poll_secs: float = 2.0  # the level table and the status object
    heartbeat_secs: float = 1.0  # SSE "status" events


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def short_error(error: Exception) -> str:
    """What the browser may see of a read error: its code or type, never its message
    (which can hold an endpoint URL, a bucket, an account)."""
    if isinstance(error, ClientError):
        return error_code(error) or type(error).__name__
    return type(error).__name__


def _sse(event: str, data) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Dashboard:
    """The live state, the pollers that keep it, and the computations behind the endpoints."""

    def __init__(self, settings: Settings, store, dynamodb, catalogue: list[str], clock=time.time):
        self.settings = settings
        self.store = store
        self.dynamodb = dynamodb
        self.catalogue = catalogue
        self.clock = clock
        self.history = History(store, workers=16)
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard-io")
        # The live state; changed on the event loop only.
        self.levels: Fetched | None = None
        self.transitions: list[Transition] | None = None
        self.table: list[LevelItem] | None = None
        self.status: Fetched | None = None
        self.published_ms: int | None = None
        self.errors: dict[str, str] = {}
        self.version = 0
        self.closing = False
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task] = []

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- what the endpoints return ---

    def staleness(self) -> dict:
        interval = None if self.levels is None else self.levels.value.get("update_interval_secs")
        return staleness(self.published_ms, interval, self.now_ms())

    def current(self) -> dict:
        levels_object = None if self.levels is None else self.levels.value
        return {
            "published": levels_object is not None,
            "window": None
            if levels_object is None
            else window_view(levels_object, self.transitions, self.catalogue),
            "live": live_levels(self.table, levels_object, self.catalogue),
            "status": status_rows(None if self.status is None else self.status.value),
            "staleness": self.staleness(),
            "errors": [f"{source}: {code}" for source, code in sorted(self.errors.items())],
        }

    def history_view(self, span: str) -> dict:
        """The stuck table and the windows over `span`, and the last hour's series, ending at
        the latest window (or now, before there is one). Blocking: run it in a thread."""
        span_ms = SPANS[span] * 1000
        latest = None if self.levels is None else parse_window_end(self.levels.value.get("update_time"))
        reference = latest if latest is not None else self.now_ms() // 1000 * 1000
        ends = self.history.window_ends(reference - max(span_ms, SERIES_SECS * 1000))
        timed = [(parse_window_end(end), end) for end in ends]
        span_ends = [end for ms, end in timed if reference - span_ms < ms <= reference]
        series_ends = [end for ms, end in timed if reference - SERIES_SECS * 1000 < ms <= reference]
        transitions = self.history.many_transitions(span_ends)
        levels = self.history.many_levels(series_ends)
        self.history.forget_before(reference - max(SPANS.values()) * 1000)  # a long-open page stays small
        return {
            "span": span,
            "span_secs": SPANS[span],
            "reference": iso_utc(reference),
            "windows": span_ends,
            "stuck": stuck_table([t for _, t in transitions], self.catalogue),
            "stuck_windows": len(transitions),
            "series": series([(end, counts_of(value)) for end, value in levels], self.catalogue),
        }

    def window(self, window_end: str) -> dict | None:
        """One past window from its history pair; None when it is not there. Blocking."""
        levels = self.history.levels(window_end)
        if levels is None:
            return None
        return window_view(levels, self.history.transitions(window_end), self.catalogue)

    # --- polling ---

    async def run_blocking(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)

    def _read_window(self, etag: str | None):
        """The latest levels object and its window's transitions (the pair's transitions
        object when it is of the same window, else the window's history object)."""
        levels = self.store.get(LEVELS_LATEST, etag)
        if levels is None or levels is NOT_MODIFIED:
            return levels, None
        update_time = levels.value.get("update_time")
        latest = self.store.get(TRANSITIONS_LATEST)
        if isinstance(latest, Fetched) and all(
            latest.value.get(key) == levels.value.get(key) for key in ("update_id", "update_time")
        ):
            return levels, transitions_of(latest.value)
        if parse_window_end(update_time) is None:
            return levels, None
        return levels, self.history.transitions(update_time)

    def _set_error(self, source: str, error: Exception | None) -> bool:
        """Records (or clears) a source's error; True when that changes what is shown."""
        if error is None:
            return self.errors.pop(source, None) is not None
        code = short_error(error)
        if self.errors.get(source) != code:
            _LOG.warning("reading %s: %s", source, " ".join(str(error).split()))
            self.errors[source] = code
            return True
        return False

    async def _notify(self) -> None:
        self.version += 1
        async with self._changed:
            self._changed.notify_all()

    async def poll_window_once(self) -> bool:
        """Reads the latest levels object (and, when it changed, its window's transitions);
        False when a read failed."""
        # While the window's transitions could not be read, read the pair again.
        etag = None if self.levels is None or self.transitions is None else self.levels.etag
        try:
            levels, transitions = await self.run_blocking(self._read_window, etag)
        except _READ_ERRORS as error:
            if self._set_error("snapshots", error):
                await self._notify()
            return False
        changed = self._set_error("snapshots", None)
        if levels is None and self.levels is not None:  # deleted: show "waiting" again
            self.levels = self.transitions = self.published_ms = None
            changed = True
        elif isinstance(levels, Fetched):
            same = self.levels is not None and self.levels.value == levels.value
            if not same:  # a rewrite of the same window is not news
                self.published_ms = levels.modified_ms if levels.modified_ms is not None else self.now_ms()
            changed = changed or not same or transitions != self.transitions
            self.levels, self.transitions = levels, transitions
        if changed:
            await self._notify()
        return True

    async def poll_table_once(self) -> bool:
        """Reads the level table and the status object; False when a read failed."""
        ok, changed = True, False
        if self.settings.level_table:
            try:
                table = await self.run_blocking(read_level_table, self.dynamodb, self.settings.level_table)
            except _READ_ERRORS as error:
                ok, changed = False, self._set_error("level table", error)
            else:
                changed = self._set_error("level table", None)
                table = None if table is None else sorted(table)
                if table != self.table:
                    self.table, changed = table, True
        try:
            status = await self.run_blocking(
                self.store.get, STATUS_OBJECT, None if self.status is None else self.status.etag
            )
        except _READ_ERRORS as error:
            ok, changed = False, self._set_error("status", error) or changed
        else:
            changed = self._set_error("status", None) or changed
            if status is not NOT_MODIFIED:
                old = None if self.status is None else self.status.value
                changed = changed or old != (None if status is None else status.value)
                self.status = status
        if changed:
            await self._notify()
        return ok

    async def _poll_forever(self, poll_once, every_secs: float) -> None:
        delay = every_secs
        while not self.closing:
            try:
                ok = await poll_once()
            except Exception:  # a bug must not stop the dashboard; it shows in the log
                _LOG.exception("polling failed")
                ok = False
            # Back off while a source fails (e.g. no credentials: each try costs seconds).
            delay = every_secs if ok else min(MAX_BACKOFF_SECS, max(every_secs, delay * 2))
            await asyncio.sleep(delay)

    async def start(self, _app=None) -> None:
        await self.poll_window_once()
        await self.poll_table_once()
        self._tasks = [
            asyncio.create_task(self._poll_forever(self.poll_window_once, self.settings.poll_secs)),
            asyncio.create_task(self._poll_forever(self.poll_table_once, self.settings.table_poll_secs)),
            asyncio.create_task(self._warm_history()),
        ]

    async def _warm_history(self) -> None:
        """Reads the longest span's history objects once in the background, so the first
        "last day" asked for is quick (1,440 windows of 60 s: a few seconds of GETs)."""
        try:
            await self.run_blocking(self.history_view, max(SPANS, key=SPANS.get))
        except _READ_ERRORS as error:
            _LOG.warning("reading the history: %s", " ".join(str(error).split()))

    async def shutdown(self, _app=None) -> None:
        """Ends the event streams, so the server stops without waiting for them."""
        self.closing = True
        async with self._changed:
            self._changed.notify_all()

    async def cleanup(self, _app=None) -> None:
        self.closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.history.close()
        self._io.shutdown(wait=False, cancel_futures=True)

    async def wait_for_change(self, version: int, timeout: float) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version != version or self.closing), timeout
                )
            except TimeoutError:
                pass


# --- the web application ---------------------------------------------------------------

DASHBOARD = web.AppKey("dashboard", Dashboard)
STATIC = web.AppKey("static", dict)
ALLOWED_HOSTS = web.AppKey("allowed_hosts", object)  # a set of Host values, or None: any


def plotly_js_path() -> str:
    """plotly.min.js as the plotly package ships it (package_data/plotly.min.js)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed: pip install -e . installs it")
    return os.path.join(list(spec.submodule_search_locations)[0], "package_data", "plotly.min.js")


def load_static() -> dict[str, tuple[bytes, bytes | None, str]]:
    """{name: (body, gzipped body or None, content type)}, read once at start."""
    folder = resources.files("pipeline.apps.dashboard").joinpath("static")
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
    files = {}
    for name in ("index.html", "app.js", "style.css"):
        body = folder.joinpath(name).read_bytes()
        files[name] = (body, None, types[os.path.splitext(name)[1]])
    with open(plotly_js_path(), "rb") as handle:
        plotly = handle.read()
    files["plotly.min.js"] = (plotly, gzip.compress(plotly, compresslevel=6), "text/javascript")
    return files


def _static_response(request: web.Request, name: str) -> web.Response:
    body, gzipped, content_type = request.app[STATIC][name]
    headers = {"Cache-Control": "no-cache" if gzipped is None else "public, max-age=86400"}
    if gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzipped
            headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)


async def index(request: web.Request) -> web.Response:
    return _static_response(request, "index.html")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in request.app[STATIC] or name == "index.html":
        raise web.HTTPNotFound()
    return _static_response(request, name)


def _json(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


async def api_current(request: web.Request) -> web.Response:
    return _json(request.app[DASHBOARD].current())


async def api_history(request: web.Request) -> web.Response:
    span = request.query.get("span", "1h")
    if span not in SPANS:
        return _json({"error": f"span must be one of {', '.join(SPANS)}"}, status=400)
    dashboard = request.app[DASHBOARD]
    try:
        return _json(await dashboard.run_blocking(dashboard.history_view, span))
    except _READ_ERRORS as error:
        _LOG.warning("reading the history: %s", " ".join(str(error).split()))
        return _json({"error": f"history: {short_error(error)}"}, status=502)


async def api_window(request: web.Request) -> web.Response:
    window_end = request.match_info["window_end"]
    if parse_window_end(window_end) is None:
        return _json({"error": "a window end is YYYY-MM-DDTHH:MM:SSZ"}, status=400)
    dashboard = request.app[DASHBOARD]
    try:
        view = await dashboard.run_blocking(dashboard.window, window_end)
    except _READ_ERRORS as error:
        _LOG.warning("reading window %s: %s", window_end, " ".join(str(error).split()))
        return _json({"error": f"history: {short_error(error)}"}, status=502)
    if view is None:
        return _json({"error": "no such window in the history"}, status=404)
    return _json(view)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the live state now and at every change, staleness every second."""
    dashboard = request.app[DASHBOARD]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    await response.write(b"retry: 1000\n\n")
    sent = None
    try:
        while not dashboard.closing:
            if sent != dashboard.version:
                sent = dashboard.version
                await response.write(_sse("current", dashboard.current()))
            else:
                await response.write(_sse("status", dashboard.staleness()))
            await dashboard.wait_for_change(sent, dashboard.settings.heartbeat_secs)
    except (ConnectionResetError, ConnectionError):
        pass  # the page went away
    return response


@web.middleware
async def guard(request: web.Request, handler):
    """Read-only, security headers on every answer, and, when bound to loopback, only the
    loopback Host names (a web page cannot reach it by rebinding a DNS name to 127.0.0.1)."""
    allowed = request.app[ALLOWED_HOSTS]
    if allowed is not None and request.host.lower() not in allowed:
        response = web.Response(status=421, text="unexpected Host header\n")
    elif request.method not in ("GET", "HEAD"):
        response = web.Response(status=405, text="read-only\n", headers={"Allow": "GET, HEAD"})
    else:
        try:
            response = await handler(request)
        except web.HTTPException as error:  # e.g. no such route
            response = web.Response(status=error.status, reason=error.reason, text=error.text)
    response.headers.update(SECURITY_HEADERS)
    return response


def make_app(dashboard: Dashboard, bound_port: int | None = None) -> web.Application:
    app = web.Application(middlewares=[guard])
    app[DASHBOARD] = dashboard
    app[STATIC] = load_static()
    host, port = dashboard.settings.host, bound_port or dashboard.settings.port
    app[ALLOWED_HOSTS] = (
        {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")} | {f"{host}:{port}".lower()}
        if is_loopback(host)
        else None
    )
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/api/current", api_current)
    app.router.add_get("/api/history", api_history)
    app.router.add_get("/api/window/{window_end}", api_window)
    app.router.add_get("/events", events)
    app.on_startup.append(dashboard.start)
    app.on_shutdown.append(dashboard.shutdown)
    app.on_cleanup.append(dashboard.cleanup)
    return app


def make_dashboard(settings: Settings) -> Dashboard:
    s3, dynamodb = make_clients(settings.aws_region, settings.aws_endpoint_url)
    return Dashboard(settings, make_store(settings.snapshot_path, s3), dynamodb, campaign_levels())


async def serve(settings: Settings, stop: asyncio.Event, on_ready=None) -> None:
    """Serves until `stop` is set; `on_ready(url)` once listening."""
    dashboard = make_dashboard(settings)
    app = make_app(dashboard)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        if on_ready is not None:
            on_ready(url_of(settings.host, settings.port))
        await stop.wait()
    finally:
        await runner.cleanup()
