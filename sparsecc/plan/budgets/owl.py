"""``owl``: outlier-weighted layerwise sparsity (Yin et al. 2023)."""

from __future__ import annotations

import numpy as np

from .common import groups_of, layer_scores, weight_reader
from .solve import solve

__all__ = ["owl_sparsities"]


def owl_sparsities(layers, n, budget, target, program, stats, lo, hi, total, progress):
    """Outlier ratios per group, mapped to [target − λ, target + λ], shifted to the target."""
    names, of = groups_of(layers)
    ratio = np.zeros(len(names))
    crit = budget.score_criterion
    weight = weight_reader(program, "owl")
    for gi, name in enumerate(names):
        if progress:
            progress(gi, len(names), name)
        members = [ly for ly, o in zip(layers, of) if o == gi]
        scores = [layer_scores(ly, weight(ly.spec.fqn), crit, stats, "owl").reshape(-1) for ly in members]
        mean = sum(float(s.double().sum()) for s in scores) / sum(s.numel() for s in scores)
        above = sum(int((s > budget.outlier_m * mean).sum()) for s in scores)
        ratio[gi] = above / sum(s.numel() for s in scores)
    if progress:
        progress(len(names), len(names), "")
    spread = ratio.max() - ratio.min()
    norm = (ratio - ratio.min()) / spread if spread > 0 else np.full_like(ratio, 0.5)
    base = target + budget.lam - 2 * budget.lam * norm
    ng = np.bincount(of, weights=n, minlength=len(names))
    s = solve(ng, base, np.ones_like(base), lo, hi, total)
    return s[of], list(ratio[of]), f"outlier ratio (share of {crit} scores > {budget.outlier_m:g}x mean)"
