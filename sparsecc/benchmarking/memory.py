"""Resident memory of this process, from /proc (Linux) or getrusage elsewhere.

``peak_rss_mb`` is the process's high-water mark (``VmHWM``): dense and
sparse models measured in one process share it, so it bounds both.
``rss_mb`` (``VmRSS``) read before and after loading a model gives that
model's own growth.
"""

from __future__ import annotations

import resource
import sys

__all__ = ["rss_mb", "peak_rss_mb", "PEAK_RSS_METHOD"]

PEAK_RSS_METHOD = "VmHWM of the benchmarking process (/proc/self/status); getrusage ru_maxrss where /proc is missing"


def _status_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, Linux kilobytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
