"""A pipeline run killed the way a machine dies: SIGKILL to it and to every process it
started (its Prism), so that no part of it lives on after the test."""

import contextlib
import os
import signal
import subprocess


@contextlib.contextmanager
def run_to_be_killed(command: list, cwd: str):
    """Starts `command` in a process group of its own and yields its Popen; on leaving
    (whether the test got what it waited for or failed), SIGKILLs the whole group and
    reaps the pipeline's process. Killing the process alone would leave its Prism running."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
