"""The one interleaved timer: variants as callables, warm-up, rounds A B .. B A, medians.

Interleaving puts every variant under the same drift (other work on the
machine, frequency changes), so their ratio is trustworthy even when absolute
times are not. The order within a round alternates so no variant always runs
right after another's cache footprint.

It lives in the vocabulary layer because two stages time things: the
torch-sparse backend picks kernels by measuring them at compile time, and
`sparsecc.benchmarking` times whole artifacts. It imports neither torch nor
numpy, so the ONNX Runtime bench stays free of torch.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["Timing", "time_interleaved"]

Progress = Callable[[float, float], None]


@dataclass
class Timing:
    """Seconds per call of each variant, one sample per round, and how the run went."""

    samples_s: dict[str, list[float]] = field(default_factory=dict)
    first_run_s: dict[str, float] = field(default_factory=dict)  # the first call (cold caches, lazy init)
    calls_per_sample: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False  # Ctrl-C stopped the rounds (only with ``interruptible=True``)
    wall_s: float = 0.0

    def medians(self) -> dict[str, float]:
        """Median seconds per call of each variant (NaN for one without samples)."""
        return {k: statistics.median(v) if v else float("nan") for k, v in self.samples_s.items()}


def _calls_per_sample(fn: Callable[[], Any], sample_s: float | None) -> int:
    """How many calls fill about ``sample_s``, from one timed call (1 without a target)."""
    if sample_s is None:
        return 1
    t0 = time.perf_counter()
    fn()
    return max(1, int(sample_s / max(time.perf_counter() - t0, 1e-7)))


def time_interleaved(
    variants: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    rounds: int | None = 7,
    time_budget_s: float | None = None,
    sample_s: float | None = None,
    progress: Progress | None = None,
    interruptible: bool = False,
) -> Timing:
    """Time each variant ``warmup`` times (the first call recorded apart), then in rounds.

    Rounds run until ``rounds`` are done or ``time_budget_s`` is spent, whichever
    comes first (give at least one). Each sample is one call, or with
    ``sample_s`` as many calls as fill about that many seconds (for calls of
    microseconds), divided back to seconds per call. ``progress(done, total)``
    is called after each round: rounds when counting rounds, seconds on a time
    budget. With ``interruptible`` a Ctrl-C ends the rounds and keeps the
    samples so far, cut to the same count for every variant.
    """
    if rounds is None and time_budget_s is None:
        raise ValueError("time_interleaved: give rounds or time_budget_s")
    names = list(variants)
    out = Timing({k: [] for k in names})
    t_start = time.perf_counter()
    try:
        for k in names:
            fn = variants[k]
            t0 = time.perf_counter()
            fn()
            out.first_run_s[k] = time.perf_counter() - t0
            for _ in range(max(warmup - 1, 0)):
                fn()
            out.calls_per_sample[k] = _calls_per_sample(fn, sample_s)
        t_begin = time.perf_counter()
        i = 0
        while (rounds is None or i < rounds) and (
                time_budget_s is None or time.perf_counter() - t_begin < time_budget_s):
            for k in names if i % 2 == 0 else names[::-1]:
                fn, n = variants[k], out.calls_per_sample[k]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                out.samples_s[k].append((time.perf_counter() - t0) / n)
            i += 1
            if progress is not None:
                if rounds is not None:
                    progress(i, rounds)
                else:
                    progress(min(time.perf_counter() - t_begin, time_budget_s), time_budget_s)
    except KeyboardInterrupt:
        if not interruptible:
            raise
        out.interrupted = True
        # a round cut short leaves some variants with an extra sample; keep the counts equal
        n = min(len(s) for s in out.samples_s.values())
        out.samples_s = {k: s[:n] for k, s in out.samples_s.items()}
    out.wall_s = time.perf_counter() - t_start
    return out
