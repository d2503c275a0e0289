"""``erk``: Erdős–Rényi-Kernel. Density ∝ ((Σ dims) / (Π dims)) ** power, rescaled to the target.

Layers whose density would exceed 1 stay dense and the rest are re-solved
(the piecewise-linear `solve` does it in one step).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .common import Layer
from .options import Budget
from .solve import solve

__all__ = ["erk_coefficient", "erk_sparsities"]


def erk_coefficient(shape: Sequence[int]) -> float:
    """(Σ dims) / (Π dims): ERK's density is proportional to it."""
    return sum(shape) / math.prod(shape)


def erk_sparsities(layers: list[Layer], n: np.ndarray, budget: Budget, lo: float, hi: float,
                   total: float) -> tuple[np.ndarray, list[float], str]:
    coef = np.array([erk_coefficient(ly.weight.shape) ** budget.power for ly in layers])
    s = solve(n, np.ones_like(n), coef, lo, hi, total)  # sparsity 1 - ε·coef, ε = -t
    return s, list(coef), "erk coefficient"
