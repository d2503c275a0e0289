"""Time loaded variants interleaved (A B A B ...) after a warm-up, for N runs or a time budget.

Interleaving puts the dense and sparse model under the same drift (other
work on the machine, frequency changes), so their ratio is trustworthy even
when absolute times are not. The order within a pair alternates so neither
variant always runs right after the other's cache footprint.
A Ctrl-C stops the loop and keeps the samples gathered so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .runners import Loaded

__all__ = ["Timing", "time_interleaved"]

Progress = Callable[[float, float], None]


@dataclass
class Timing:
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    first_run_ms: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    wall_s: float = 0.0


def time_interleaved(
    loaded: Sequence[Loaded], inputs: Sequence[np.ndarray], *, warmup: int = 10, runs: int | None = 100,
    time_budget_s: float | None = None, progress: Progress | None = None,
) -> Timing:
    """Run every variant ``warmup`` times, then in rounds until ``runs`` rounds or the budget is spent.

    ``progress(done, total)`` is called after each round: rounds when
    counting runs, seconds when on a time budget.
    """
    if runs is None and time_budget_s is None:
        raise ValueError("give runs or time_budget_s")
    out = Timing({ld.variant.name: [] for ld in loaded})
    t_start = time.perf_counter()
    try:
        for ld in loaded:
            t0 = time.perf_counter()
            ld.run(inputs)
            out.first_run_ms[ld.variant.name] = (time.perf_counter() - t0) * 1e3
            for _ in range(max(warmup - 1, 0)):
                ld.run(inputs)
        t_begin = time.perf_counter()
        i = 0
        while True:
            if runs is not None and i >= runs:
                break
            if time_budget_s is not None and time.perf_counter() - t_begin >= time_budget_s:
                break
            order = loaded if i % 2 == 0 else list(reversed(loaded))
            for ld in order:
                t0 = time.perf_counter()
                ld.run(inputs)
                out.samples_ms[ld.variant.name].append((time.perf_counter() - t0) * 1e3)
            i += 1
            if progress is not None:
                if runs is not None:
                    progress(i, runs)
                else:
                    progress(min(time.perf_counter() - t_begin, time_budget_s), time_budget_s)
    except KeyboardInterrupt:
        out.interrupted = True
        # a round cut short leaves one variant with an extra sample; keep the pairs equal
        n = min(len(s) for s in out.samples_ms.values())
        out.samples_ms = {k: s[:n] for k, s in out.samples_ms.items()}
    out.wall_s = time.perf_counter() - t_start
    return out
