"""The streaming process's allocator settings (pipeline.runtime.allocator)."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.runtime import allocator

ROOT = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's mallopt and malloc_trim")

# Frees every other block of 100 MB of 100 KB blocks: glibc keeps the holes until trimmed.
HOLES_THEN_TRIM = """
from pipeline.runtime import allocator

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

blocks = [b"x" * 100_000 for _ in range(1000)]
del blocks[::2]
held = rss_mib()
allocator.trim()
print(held, rss_mib())
"""


@glibc_only
def test_trim_gives_freed_heap_pages_back():
    out = subprocess.run(
        [sys.executable, "-c", HOLES_THEN_TRIM], capture_output=True, text=True, check=True, cwd=ROOT
    )
    held, trimmed = map(int, out.stdout.split())
    assert held - trimmed >= 30, f"RSS {held} MiB with 50 MB freed, {trimmed} MiB after trim"


@glibc_only
def test_arenas_are_capped_unless_the_environment_sets_them(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert allocator.limit_arenas(allocator.ARENAS)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not allocator.limit_arenas(allocator.ARENAS)
