"""Turning per-layer scores into sparsities that hit the target: the piecewise-linear solve and the rounding."""

from __future__ import annotations

import numpy as np

__all__ = ["solve", "round_counts"]


def solve(n: np.ndarray, a: np.ndarray, b: np.ndarray, lo: float, hi: float, total: float) -> np.ndarray:
    """Sparsities s_i = clip(a_i + b_i·t, lo, hi) (b_i ≥ 0) with Σ n_i s_i = total.

    The sum is piecewise linear and non-decreasing in t, with a kink wherever
    a layer reaches a bound; find the piece that holds ``total`` and solve it
    exactly. Layers clipped at a bound are the ones the iterative ERK solve
    would mark dense (or capped) before re-solving the rest.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    moving = b > 0
    if not moving.any():
        return np.clip(a, lo, hi)
    kinks = np.unique(np.concatenate([(lo - a[moving]) / b[moving], (hi - a[moving]) / b[moving]]))
    sums = np.empty(len(kinks))
    for start in range(0, len(kinks), 512):  # bounded memory for many layers
        chunk = kinks[start:start + 512]
        sums[start:start + len(chunk)] = np.clip(a[None, :] + b[None, :] * chunk[:, None], lo, hi) @ n
    sums = np.maximum.accumulate(sums)  # exact monotonicity despite rounding
    i = int(np.searchsorted(sums, total))
    if i == 0:
        t = kinks[0]
    elif i == len(kinks):
        t = kinks[-1]
    else:
        t0, t1, v0, v1 = kinks[i - 1], kinks[i], sums[i - 1], sums[i]
        t = t1 if v1 <= v0 else t0 + (total - v0) * (t1 - t0) / (v1 - v0)
    return np.clip(a + b * t, lo, hi)


def round_counts(x: np.ndarray, cmin: np.ndarray, cmax: np.ndarray, g: np.ndarray, total: int) -> np.ndarray:
    """Integer unit counts near ``x`` with Σ count·unit == total (largest remainder).

    Units of one parameter (unstructured) always reach ``total`` exactly;
    with larger units the result is the achievable total nearest to it.
    """
    c = np.clip(np.floor(x + 1e-9), cmin, cmax).astype(np.int64)
    rest = total - int((c * g).sum())
    rem = x - c
    for _ in range(4):
        if rest < 0:  # float slack overshot: take back from the smallest remainders
            for i in np.argsort(rem, kind="stable"):
                while rest < 0 and c[i] > cmin[i]:
                    c[i] -= 1
                    rest += int(g[i])
                    rem[i] += 1
                if rest >= 0:
                    break
        progressed = True
        while rest > 0 and progressed:
            progressed = False
            for i in np.argsort(-rem, kind="stable"):
                if rest <= 0:
                    break
                if c[i] < cmax[i] and g[i] <= rest:
                    c[i] += 1
                    rest -= int(g[i])
                    rem[i] -= 1
                    progressed = True
        if rest >= 0:
            break
    if rest > 0:  # no whole unit fits: overshoot by one unit when that is nearer
        room = np.nonzero((c < cmax) & (g < 2 * rest))[0]
        if len(room):
            i = room[np.argmin(g[room])]
            c[i] += 1
    return c
