"""Helpers shared by the benchmark items: child runs, moto, statistics."""

import json
import os
import subprocess
import sys

from pipeline.testing.aws_server import DUMMY_CREDENTIALS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(kind: str, args: dict, timeout_secs: float = 900) -> dict:
    """Runs `python -m bench.child KIND ARGS` and returns its RESULT line as a dict."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.child", kind, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_secs,
        env={**os.environ, **DUMMY_CREDENTIALS, "PYTHONPATH": ROOT},
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"bench child {kind} failed ({done.returncode}):\n{done.stderr[-4000:]}")


def start_child(kind: str, args: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.child", kind, json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **DUMMY_CREDENTIALS, "PYTHONPATH": ROOT},
    )


def child_result(process: subprocess.Popen, timeout_secs: float = 900) -> dict:
    stdout, stderr = process.communicate(timeout=timeout_secs)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"bench child failed ({process.returncode}):\n{stderr[-4000:]}")


def percentile(values: list, fraction: float):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]
