"""Memory readings of the current process, and the one-JSON-line protocol of benchmark workers.

Benchmarks measure each configuration in a fresh subprocess so that its peak memory is its own; the
worker prints ``#RESULT {json}`` and :func:`run_marked_worker` reads it back.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULT_MARKER = "#RESULT "
MIB = 1024.0 * 1024.0


def peak_rss_mib() -> float:
    """Peak RSS of this process (``VmHWM``, which :func:`reset_peak_rss` resets; ``ru_maxrss`` where
    /proc is absent), in MiB."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024.0  # type: ignore[union-attr]
    except (OSError, AttributeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MIB if sys.platform == "darwin" else peak / 1024.0  # KiB on Linux, bytes on macOS


def current_rss_mib() -> float:
    """Resident set size now, in MiB (``/proc/self/statm``; the peak where /proc is absent)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so that RSS counts live memory only."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def emit_result(result: dict[str, Any]) -> None:
    """Print a worker's result as the marked JSON line :func:`run_marked_worker` looks for."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_marked_worker(cmd: list[str], failure: dict[str, Any]) -> dict[str, Any]:
    """Run a worker command; its last marked JSON line plus ``wall_s``, or ``failure`` with an error."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        return {**failure, "error": f"worker exited with {proc.returncode}", "wall_s": wall}
    return dict(json.loads(lines[-1][len(RESULT_MARKER) :]), wall_s=wall)
