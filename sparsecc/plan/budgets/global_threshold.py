"""``global``: one score threshold across layers, on (optionally RMS-normalised) unit scores."""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import layer_scores, unit_scores, weight_reader
from .solve import round_counts

__all__ = ["global_counts"]


def global_counts(layers, budget, program, stats, total, cmin, cmax, g) -> tuple[np.ndarray, str]:
    """One threshold on (optionally normalised) unit scores across all layers."""
    crit = budget.score_criterion
    weight = weight_reader(program, "global")
    ranked: list[torch.Tensor] = []
    for ly in layers:
        u = unit_scores(ly, layer_scores(ly, weight(ly.spec.fqn), crit, stats, "global"))
        if budget.normalize == "rms":
            u = u / u.square().mean().sqrt().clamp_min(torch.finfo(torch.float32).tiny)
        ranked.append(torch.sort(u).values)

    def counts_le(tau: float) -> np.ndarray:
        c = np.array([int(torch.searchsorted(r, torch.tensor([tau]), right=True)) for r in ranked], dtype=np.int64)
        return np.clip(c, cmin, cmax)

    lo_t = -math.inf
    hi_t = max(float(r[-1]) for r in ranked)
    if int((counts_le(hi_t) * g).sum()) <= total:
        lo_t = hi_t
    else:
        lo_t = min(float(r[0]) for r in ranked) - 1.0
        for _ in range(200):  # pruned(lo_t) <= total < pruned(hi_t)
            mid = (lo_t + hi_t) / 2
            if mid in (lo_t, hi_t):
                break
            if int((counts_le(mid) * g).sum()) <= total:
                lo_t = mid
            else:
                hi_t = mid
            between = (np.minimum(counts_le(hi_t), cmax) - counts_le(lo_t)).sum()
            if between <= 4096:
                break
    c = counts_le(lo_t)
    rest = total - int((c * g).sum())
    if rest > 0:  # the units just above the threshold, lowest first, while they fit
        cand = []
        for i, r in enumerate(ranked):
            end = min(int(torch.searchsorted(r, torch.tensor([hi_t]), right=True)), int(cmax[i]))
            cand += [(float(v), i) for v in r[c[i]:end].tolist()]
        for _, i in sorted(cand):
            if rest <= 0:
                break
            if c[i] < cmax[i] and g[i] <= rest:
                c[i] += 1
                rest -= int(g[i])
    # Whatever a unit size leaves over goes to the layers with room, nearest as the rounding does.
    c = round_counts(c.astype(np.float64), cmin, cmax, g, total)
    return c, f"{crit} ({'raw' if budget.normalize == 'none' else 'rms-normalised'})"
