"""``uniform``: every re-allocated layer at the target (within the layer bounds)."""

from __future__ import annotations

import numpy as np

from .solve import solve

__all__ = ["uniform_sparsities"]


def uniform_sparsities(n: np.ndarray, lo: float, hi: float, total: float) -> np.ndarray:
    return solve(n, np.zeros_like(n), np.ones_like(n), lo, hi, total)
