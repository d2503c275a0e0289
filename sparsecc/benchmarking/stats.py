"""Latency statistics and the dense/sparse ratio with a bootstrap confidence interval.

The ratio is ``dense p50 / sparse p50``: above 1 the sparse model is faster.
Samples are paired (dense and sparse run interleaved, A B A B), so the
bootstrap resamples pairs, which keeps drift that hit both variants out of
the interval; it resamples contiguous blocks of pairs (moving-block
bootstrap, block length n^(1/3)) because neighbouring runs share the
machine's state, and independent resampling would make the interval too
narrow. A ratio whose 95% interval contains 1 is "no measurable
change", whatever its point value.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["summarize", "bootstrap_ratio", "verdict", "NO_CHANGE", "FASTER", "SLOWER", "BOOTSTRAP_RESAMPLES"]

NO_CHANGE = "no measurable change"
FASTER = "faster"
SLOWER = "slower"
BOOTSTRAP_RESAMPLES = 2000


def summarize(samples_ms: Sequence[float], batch: int = 1) -> dict[str, float | int | None]:
    """min / p50 / p90 / p99 / mean / std in ms, and items per second at the mean latency."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "min": None, "p50": None, "p90": None, "p99": None, "mean": None, "std": None,
                "throughput_per_s": None}
    mean = float(a.mean())
    return {
        "n": int(a.size),
        "min": float(a.min()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": mean,
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "throughput_per_s": batch * 1000.0 / mean if mean > 0 else None,
    }


def bootstrap_ratio(
    dense_ms: Sequence[float], sparse_ms: Sequence[float], *, seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES, paired: bool = True,
) -> dict[str, float | int | None]:
    """``median(dense) / median(sparse)`` and its percentile-bootstrap 95% interval.

    ``paired`` resamples blocks of consecutive pairs (extra samples of the
    longer list are dropped); otherwise each list is resampled alone.
    """
    d = np.asarray(dense_ms, dtype=np.float64)
    s = np.asarray(sparse_ms, dtype=np.float64)
    if d.size == 0 or s.size == 0:
        return {"ratio": None, "ci95": None, "n": 0, "resamples": 0, "seed": seed}
    ratio = float(np.median(d) / np.median(s))
    rng = np.random.default_rng(seed)
    if paired:
        n = min(d.size, s.size)
        d, s = d[:n], s[:n]
        block = max(1, int(round(n ** (1 / 3))))
        starts = rng.integers(0, n - block + 1, size=(resamples, -(-n // block)))
        idx = (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
        boot = np.median(d[idx], axis=1) / np.median(s[idx], axis=1)
    else:
        bd = np.median(d[rng.integers(0, d.size, size=(resamples, d.size))], axis=1)
        bs = np.median(s[rng.integers(0, s.size, size=(resamples, s.size))], axis=1)
        boot = bd / bs
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"ratio": ratio, "ci95": [float(lo), float(hi)], "n": int(min(d.size, s.size)),
            "resamples": resamples, "seed": seed, "method": "paired moving-block" if paired else "independent"}


def verdict(ci95: Sequence[float] | None) -> str:
    """``faster`` only when the whole interval is above 1, ``slower`` when below, else no change."""
    if not ci95:
        return NO_CHANGE
    lo, hi = ci95
    if lo > 1.0:
        return FASTER
    if hi < 1.0:
        return SLOWER
    return NO_CHANGE
