"""The one error type of the benchmarking package."""

from __future__ import annotations

__all__ = ["BenchError"]


class BenchError(RuntimeError):
    """A bundle, option or runtime that cannot be benchmarked; the message names the value at fault."""
