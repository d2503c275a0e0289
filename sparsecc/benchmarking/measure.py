"""Time loaded variants interleaved (A B B A ...) after a warm-up, for N runs or a time budget.

The loop is the project's one timer (`sparsecc.core.timing`): the dense and
sparse model run under the same drift, so their ratio is trustworthy even
when absolute times are not. A Ctrl-C stops the loop and keeps the samples
gathered so far.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from sparsecc.core import timing as core_timing

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
    counting runs, seconds when on a time budget. The loop is
    `sparsecc.core.timing.time_interleaved`; this reports in milliseconds.
    """
    if runs is None and time_budget_s is None:
        raise ValueError("give runs or time_budget_s")
    variants = {ld.variant.name: functools.partial(ld.run, inputs) for ld in loaded}
    t = core_timing.time_interleaved(variants, warmup=warmup, rounds=runs, time_budget_s=time_budget_s,
                                     progress=progress, interruptible=True)
    return Timing({k: [x * 1e3 for x in v] for k, v in t.samples_s.items()},
                  {k: x * 1e3 for k, x in t.first_run_s.items()}, t.interrupted, t.wall_s)
