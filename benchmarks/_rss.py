"""Resident memory of this process, read from /proc/self/status (Linux only).

Shared by the benchmarks that measure memory. A child process started with ``CHILD_ENV``
maps and unmaps every tensor of 64 KiB and more on its own, so its resident set follows the
live tensors rather than what glibc's heap happens to hold on to.
"""

from __future__ import annotations

import os
from pathlib import Path

CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status: VmRSS (now), VmHWM (peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    """Set VmHWM back to the current VmRSS (getrusage's ru_maxrss cannot be reset)."""
    Path("/proc/self/clear_refs").write_text("5")
