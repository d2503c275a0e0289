"""``ecoflap``: ECoFLaP-style zeroth-order block scores (Sung et al. 2023)."""

from __future__ import annotations

import numpy as np
import torch

from .common import groups_of, loss_fn, weight_reader
from .options import BudgetError
from .solve import solve

__all__ = ["ecoflap_sparsities"]


def ecoflap_sparsities(layers, n, budget, program, calibration, loss, lo, hi, total, progress):
    """Zeroth-order block scores; kept weights beyond the floor shared in proportion to them."""
    if calibration is None:
        raise BudgetError("budget 'ecoflap' runs the calibration loss: pass calibration= (sparsecc.calibrate.CalibrationData)")
    loss = loss_fn(loss, "ecoflap")
    names, of = groups_of(layers)
    read = weight_reader(program, "ecoflap")
    weights = {ly.spec.fqn: read(ly.spec.fqn) for ly in layers}
    score = np.zeros(len(names))
    steps = len(names) * budget.samples
    for gi, name in enumerate(names):
        members = [ly.spec.fqn for ly, o in zip(layers, of) if o == gi]
        for k in range(budget.samples):
            if progress:
                progress(gi * budget.samples + k, steps, name)
            gen = torch.Generator().manual_seed(budget.seed * 1_000_003 + gi * 131 + k)
            z = {f: torch.randn(weights[f].shape, generator=gen, dtype=weights[f].dtype) for f in members}
            plus = loss(program, calibration, {f: weights[f] + budget.eps * z[f] for f in members}, budget.max_batches)
            minus = loss(program, calibration, {f: weights[f] - budget.eps * z[f] for f in members}, budget.max_batches)
            score[gi] += abs(float(plus) - float(minus)) / (2 * budget.eps)
    if progress:
        progress(steps, steps, "")
    score /= budget.samples
    ng = np.bincount(of, weights=n, minlength=len(names))
    if budget.aggregate == "mean":
        score = score / ng
    # kept = ng·(1 − hi) + α·score, i.e. sparsity = hi − α·score/ng (α = −t).
    s = solve(ng, np.full(len(names), hi), score / ng, lo, hi, total)
    return s[of], list(score[of]), f"zeroth-order |dL| along random directions (eps={budget.eps:g}, {budget.aggregate})"
