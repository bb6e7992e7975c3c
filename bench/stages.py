"""Where a pipeline's time goes, stage by stage, seen from the Python SDK harness.

Instrumentation for bench children only (bench.child installs it with "stages": true):
it wraps Beam's BundleProcessor.process_bundle and the harness's state channel, and
counts, per fused stage (the steps one bundle descriptor runs), the bundles, the wall
time inside them and, of that, the time waiting for input (a Flink bundle stays open
up to --max_bundle_time_mills whether or not data comes: the rest is work), the
encoded input they received, and the state requests they made with the time spent
blocked on the runner's answers. With Prism and with Flink's
LOOPBACK workers the harness runs in the child's own process, so this sees every
Python step. A stage is named by its top-level steps ("ReadKinesis+ParseEvents+...").

What it cannot see is the runner's side: the gaps between bundles (the runner deciding
what to run next, moving watermarks) are the wall time outside every stage.
"""

import threading
import time
from collections import defaultdict

_lock = threading.Lock()
_current = threading.local()
_stats = defaultdict(lambda: defaultdict(float))
_installed = False


def _stage_name(descriptor) -> str:
    names = {t.unique_name.split("/", 1)[0] for t in descriptor.transforms.values()}
    names = {n for n in names if n and not n.startswith(("ref_", "eref_", "stage-", "fn", "external_"))}
    return "+".join(sorted(names)) or descriptor.id


def _add(stage: str, **amounts):
    with _lock:
        for key, value in amounts.items():
            _stats[stage][key] += value


def install():
    """Wraps the harness's bundle and state calls (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    from apache_beam.runners.worker import bundle_processor, sdk_worker

    original_process = bundle_processor.BundleProcessor.process_bundle
    names = {}

    def process_bundle(self, instruction_id, *args, **kwargs):
        key = id(self.process_bundle_descriptor)
        stage = names.get(key)
        if stage is None:
            stage = names[key] = _stage_name(self.process_bundle_descriptor)
        _current.stage = stage
        started = time.perf_counter()
        try:
            return original_process(self, instruction_id, *args, **kwargs)
        finally:
            _current.stage = None
            _add(stage, bundles=1, seconds=time.perf_counter() - started)

    bundle_processor.BundleProcessor.process_bundle = process_bundle

    original_encoded = bundle_processor.DataInputOperation.process_encoded

    def process_encoded(self, encoded_windowed_values):
        stage = getattr(_current, "stage", None)
        if stage is not None:
            _add(stage, input_bytes=len(encoded_windowed_values), input_chunks=1)
        return original_encoded(self, encoded_windowed_values)

    bundle_processor.DataInputOperation.process_encoded = process_encoded

    from apache_beam.runners.worker import data_plane

    original_inputs = data_plane._GrpcDataChannel.input_elements

    def input_elements(self, *args, **kwargs):
        """The bundle's input, timing how long each element was waited for."""
        elements = original_inputs(self, *args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                element = next(elements)
            except StopIteration:
                waited, element = time.perf_counter() - started, None
            else:
                waited = time.perf_counter() - started
            stage = getattr(_current, "stage", None)
            if stage is not None:
                _add(stage, input_wait_seconds=waited)
            if element is None:
                return
            yield element

    data_plane._GrpcDataChannel.input_elements = input_elements

    handler = sdk_worker.GrpcStateHandler
    original_blocking = handler._blocking_request
    original_request = handler._request

    def blocking_request(self, request):
        started = time.perf_counter()
        _current.blocking = True
        try:
            return original_blocking(self, request)
        finally:
            _current.blocking = False
            stage = getattr(_current, "stage", None)
            if stage is not None:
                _add(stage, state_blocked_seconds=time.perf_counter() - started)

    def request(self, request):
        stage = getattr(_current, "stage", None)
        if stage is not None:
            _add(stage, **{f"state_{request.WhichOneof('request')}": 1})
        return original_request(self, request)

    handler._blocking_request = blocking_request
    handler._request = request

    original_future_get = sdk_worker._Future.get

    def future_get(self, timeout=None):
        stage = getattr(_current, "stage", None)
        if stage is None or self._event.is_set() or getattr(_current, "blocking", False):
            return original_future_get(self, timeout)
        started = time.perf_counter()
        try:
            return original_future_get(self, timeout)
        finally:
            _add(stage, state_blocked_seconds=time.perf_counter() - started)

    sdk_worker._Future.get = future_get


def report() -> dict:
    """{stage: {bundles, seconds, input_chunks, input_bytes, state_get, ...}}."""
    with _lock:
        return {stage: dict(values) for stage, values in _stats.items()}
