"""Helpers shared by the benchmark items: child runs, moto in its own process, peak
memory of process trees, statistics."""

import json
import os
import subprocess
import sys
import threading

from pipeline.testing.aws_server import DUMMY_CREDENTIALS, client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_ENV = {**os.environ, **DUMMY_CREDENTIALS, "PYTHONPATH": ROOT}


def run_child(kind: str, args: dict, timeout_secs: float = 1800) -> dict:
    """Runs `python -m bench.child KIND ARGS` and returns its RESULT line as a dict."""
    return child_result(start_child(kind, args), timeout_secs)


def start_child(kind: str, args: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.child", kind, json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )


def child_result(process: subprocess.Popen, timeout_secs: float = 1800) -> dict:
    stdout, stderr = process.communicate(timeout=timeout_secs)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"bench child failed ({process.returncode}):\n{stderr[-4000:]}")


class MotoProcess:
    """moto's server in a process of its own (as `make run` starts it), so that the
    bench's producer and moto do not share one interpreter's lock, with its Kinesis made
    to keep up with long streams (pipeline.testing.chaos.fast_kinesis_for_moto: moto's
    GetRecords otherwise scans a shard from its first record, so a 100,000-record
    backlog would measure moto; the answers are moto's own)."""

    def __enter__(self):
        from pipeline.testing.chaos import moto_process

        os.environ.update(DUMMY_CREDENTIALS)  # only ever these, with moto
        self._context = moto_process()
        self.endpoint, self.process = self._context.__enter__()
        return self

    def __exit__(self, *exc):
        self._context.__exit__(*exc)

    def client(self, service: str):
        return client(service, self.endpoint)


def _parents() -> dict:
    """{pid: parent pid} of every process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    # "pid (command) state ppid ...": the command may hold spaces
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return parents


TICKS = os.sysconf("SC_CLK_TCK")


def _status(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return {}
    name = os.path.basename(command[0].decode(errors="replace")) if command and command[0] else "?"
    if name.startswith("python"):
        name = "python " + " ".join(c.decode(errors="replace") for c in command[1:3])
    elif name == "java":
        name = "java (Flink job server)"
    cpu_secs = (int(stat[11]) + int(stat[12])) / TICKS  # utime + stime
    return {"name": name, "hwm_kib": int(fields.get("VmHWM", "0 kB").split()[0]), "cpu_secs": cpu_secs}


class ProcessWatch(threading.Thread):
    """Samples, every `every_secs`, the peak resident memory (VmHWM) and the CPU time of
    each process in the trees under the given pids (a pipeline child and what it started:
    Prism, Flink's Java job server), so a process that ends first is still counted. CPU
    time per event is the figure that other work on a shared machine disturbs least."""

    def __init__(self, roots: dict, every_secs: float = 1.0):
        super().__init__(daemon=True)
        self.roots = dict(roots)  # label -> pid
        self.every = every_secs
        self.peaks = {}  # (label, name, pid) -> peak KiB
        self.cpu = {}  # (label, name, pid) -> CPU seconds
        self.stop_event = threading.Event()

    def add(self, label: str, pid: int):
        self.roots[label] = pid

    def sample(self):
        children = {}
        for pid, parent in _parents().items():
            children.setdefault(parent, []).append(pid)
        for label, root in list(self.roots.items()):
            stack = [root]
            while stack:
                pid = stack.pop()
                status = _status(pid)
                if status:
                    key = (label, status["name"], pid)
                    self.peaks[key] = max(self.peaks.get(key, 0), status["hwm_kib"])
                    self.cpu[key] = max(self.cpu.get(key, 0), status["cpu_secs"])
                stack.extend(children.get(pid, ()))

    def run(self):
        while not self.stop_event.wait(self.every):
            self.sample()

    def stop(self) -> list:
        """[(label, process, peak MiB, CPU seconds)], the largest first (processes that
        used no memory, e.g. a shell that exec'd, left out)."""
        self.sample()
        self.stop_event.set()
        merged = {}
        for key, kib in self.peaks.items():
            label, name, _pid = key
            peak, cpu = merged.get((label, name), (0, 0))
            merged[(label, name)] = (max(peak, kib), cpu + self.cpu.get(key, 0))
        rows = [(lbl, name, kib / 1024, cpu) for (lbl, name), (kib, cpu) in merged.items() if kib]
        return sorted(rows, key=lambda r: -r[2])


def percentile(values: list, fraction: float):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def quantiles(values: list) -> dict:
    """{"n", "p50", "p95", "max"} of a list of numbers (None where empty)."""
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "max": max(values) if values else None,
    }
