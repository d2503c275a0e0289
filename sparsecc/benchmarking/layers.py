"""Per-layer dense vs sparse table from two profiles, with a verdict per sparsified layer.

A layer's verdict uses the same bootstrap as the end-to-end ratio (runs of
the two profiles paired by index): "paid: 1.8x here" only when the whole
95% interval is above 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .stats import FASTER, NO_CHANGE, SLOWER, bootstrap_ratio, verdict

__all__ = ["layer_table", "coverage", "COVERAGE_TOLERANCE"]

# Per-layer times should add up to the end-to-end time within this fraction.
COVERAGE_TOLERANCE = 0.15


def _layer_verdict(label: str, ratio: float | None, support: str | None) -> str:
    if support and "dense" in support:
        # the same dense kernel ran on both: a measured difference is drift, not sparsity
        return "no gain: runs dense kernels on this backend"
    if label == FASTER:
        return f"paid: {ratio:.2f}x here"
    if label == SLOWER:
        return f"slower: {1 / ratio:.2f}x the dense time"
    return NO_CHANGE


def layer_table(
    sparse_layers: list[dict[str, Any]], profiles: dict[str, Any], checks: dict[str, dict[str, str]], seed: int = 0,
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per sparsified layer, and the layers the profile did not show."""
    rows, missing = [], []
    dense = (profiles.get("dense") or {}).get("layers", {})
    sparse = (profiles.get("sparse") or {}).get("layers", {})
    for lay in sparse_layers:
        name = lay["layer"]
        s, d = sparse.get(name), dense.get(name)
        support = (checks.get(name) or {}).get("support")
        row: dict[str, Any] = {
            "layer": name, "role": lay.get("role"), "sparsity": lay.get("achieved"), "pattern": lay.get("pattern"),
            "flops": lay.get("flops"), "backend_support": support,
            "sparse_ms": float(np.median(s["ms"])) if s else None,
            "dense_ms": float(np.median(d["ms"])) if d else None,
            "nodes": {"sparse": s["nodes"] if s else [], "dense": d["nodes"] if d else []},
            "ratio": None, "ci95": None, "label": None, "verdict": "not found in the profile",
        }
        if s is None:
            missing.append(name)
        if s and d:
            b = bootstrap_ratio(d["ms"], s["ms"], seed=seed)
            label = verdict(b["ci95"])
            row.update(ratio=b["ratio"], ci95=b["ci95"], label=label,
                       verdict=_layer_verdict(label, b["ratio"], support))
        elif s:
            row["verdict"] = "no dense reference to compare with"
        rows.append(row)
    return rows, missing


_OVERHEAD = "runtime overhead outside operator kernels (input/output copies, scheduling, memory planning)"


def coverage(profile: dict[str, Any], rest: str = _OVERHEAD) -> dict[str, Any]:
    """How much of the end-to-end time the per-layer times account for."""
    e2e_runs = np.asarray(profile.get("e2e_ms") or [], dtype=np.float64)
    layer_runs = [np.asarray(v["ms"], dtype=np.float64) for v in (profile.get("layers") or {}).values()]
    # per run, then the median: a sum of per-layer medians drops the spikes a loaded machine puts in every run
    sums = np.sum(layer_runs, axis=0) if layer_runs else np.zeros_like(e2e_runs)
    n = min(len(sums), len(e2e_runs))
    e2e = float(np.median(e2e_runs)) if e2e_runs.size else None
    total = float(np.median(sums)) if len(sums) else 0.0
    frac = float(np.median(sums[:n] / e2e_runs[:n])) if n and e2e else None
    note = ""
    if frac is None:
        note = "no end-to-end time in the profile"
    elif frac < 1 - COVERAGE_TOLERANCE:
        note = (f"per-layer times cover {frac:.0%} of the end-to-end time; the rest is {rest}")
    elif frac > 1 + COVERAGE_TOLERANCE:
        note = f"per-layer times add up to {frac:.0%} of the end-to-end time (overlapping or multi-threaded events)"
    return {"layers_ms": total, "e2e_ms": e2e, "fraction": frac,
            "within_tolerance": frac is not None and abs(frac - 1) <= COVERAGE_TOLERANCE, "note": note}
