"""Schedules over training steps: gradual sparsity, temperatures, scales and decays.

- `interpolate`: a value moving from ``start`` to ``end`` over ``steps`` steps,
  ``linear``, ``cubic`` (fast at first, slow at the end: Zhu & Gupta's gradual
  pruning curve), ``cosine`` or ``exp`` (geometric: for temperatures, which
  should spend as long between 4 and 0.4 as between 0.4 and 0.04);
- `sparsity_at`: the sparsity to prune to at a step, from ``initial`` (dense: 0)
  to ``target``, held at ``initial`` before ``begin`` and exactly ``target`` from
  ``end`` on (float arithmetic never leaves it a hair short);
- `Schedule`: the same as a frozen, JSON-able record that options can carry.

Every function is a pure function of the step, so a resumed run sees the same
values as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsecc.errors import UsageError

__all__ = ["KINDS", "interpolate", "sparsity_at", "Schedule"]

KINDS = ("constant", "linear", "cubic", "cosine", "exp")


def _fraction(step: int, steps: int, begin: int = 0) -> float:
    """Progress in [0, 1] of ``step`` through ``[begin, begin + steps]``."""
    if steps <= 0:
        return 1.0
    return min(max((step - begin) / steps, 0.0), 1.0)


def interpolate(start: float, end: float, step: int, steps: int, kind: str = "linear") -> float:
    """The value at ``step`` of a schedule from ``start`` (step 0) to ``end`` (step ``steps`` on)."""
    if kind not in KINDS:
        raise UsageError(f"unknown schedule kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "constant":
        return float(start)
    t = _fraction(step, steps)
    if t >= 1.0:
        return float(end)  # exactly, not start + (end - start) * 1.0
    if kind == "linear":
        return start + (end - start) * t
    if kind == "cubic":
        return end + (start - end) * (1.0 - t) ** 3
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if start <= 0 or end <= 0:
        raise UsageError(f"an exp schedule needs positive ends, got {start} -> {end}")
    return start * (end / start) ** t


def sparsity_at(step: int, target: float, *, end: int, begin: int = 0, initial: float = 0.0,
                kind: str = "cubic") -> float:
    """Sparsity to prune to at ``step``: ``initial`` up to ``begin``, ``target`` from ``end`` on.

    ``kind='cubic'`` is s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3 (Zhu & Gupta 2017):
    many weights go early, while the network still adapts fast, few at the end.
    """
    if not 0.0 <= target <= 1.0 or not 0.0 <= initial <= 1.0:
        raise UsageError(f"sparsities must lie in [0, 1], got initial {initial}, target {target}")
    if end < begin:
        raise UsageError(f"the schedule ends (step {end}) before it begins (step {begin})")
    if step >= end:
        return float(target)
    if step <= begin:
        return float(initial)
    return interpolate(initial, target, step - begin, end - begin, kind)


@dataclass(frozen=True)
class Schedule:
    """``start`` -> ``end`` over ``steps`` steps of ``kind`` (see `interpolate`)."""

    start: float
    end: float
    steps: int
    kind: str = "linear"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown schedule kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind == "exp" and (self.start <= 0 or self.end <= 0):
            raise UsageError(f"an exp schedule needs positive ends, got {self.start} -> {self.end}")

    def __call__(self, step: int) -> float:
        return interpolate(self.start, self.end, step, self.steps, self.kind)
