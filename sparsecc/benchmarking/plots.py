"""matplotlib figures of a bench result, as base64 PNG for a self-contained HTML report."""

from __future__ import annotations

import base64
import io
from typing import Any

__all__ = ["latency_plot", "layer_plot", "sparsity_speedup_plot"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on a device or in CI
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def latency_plot(run: dict[str, Any], title: str) -> str | None:
    """Latency distributions of dense and sparse (box + points), one measurement."""
    variants = {k: v["samples_ms"] for k, v in (run.get("variants") or {}).items() if v.get("samples_ms")}
    if not variants:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    names = list(variants)
    ax.boxplot([variants[n] for n in names], vert=False, tick_labels=names, showfliers=False, widths=0.5)
    for i, n in enumerate(names, start=1):
        ys = [i + (j % 7 - 3) * 0.03 for j in range(len(variants[n]))]
        ax.scatter(variants[n], ys, s=4, alpha=0.4, color="C0" if n == "dense" else "C1")
    ax.set_xlabel("latency per call (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def layer_plot(run: dict[str, Any], title: str) -> str | None:
    """Per-layer dense vs sparse time, horizontal bars."""
    layers = [lay for lay in ((run.get("profile") or {}).get("layers") or []) if lay.get("sparse_ms") is not None]
    if not layers:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(layers) + 1.0))
    ys = range(len(layers))
    dense = [lay["dense_ms"] or 0.0 for lay in layers]
    sparse = [lay["sparse_ms"] for lay in layers]
    ax.barh([y - 0.2 for y in ys], dense, height=0.4, label="dense", color="C0")
    ax.barh([y + 0.2 for y in ys], sparse, height=0.4, label="sparse", color="C1")
    ax.set_yticks(list(ys), [lay["layer"] for lay in layers], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median time per call (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def sparsity_speedup_plot(run: dict[str, Any], title: str) -> str | None:
    """Each sparsified layer's sparsity against its dense/sparse ratio, with its 95% CI."""
    pts = [lay for lay in ((run.get("profile") or {}).get("layers") or [])
           if lay.get("ratio") is not None and lay.get("sparsity") is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    x = [lay["sparsity"] * 100 for lay in pts]
    y = [lay["ratio"] for lay in pts]
    err = [[r - lay["ci95"][0] for r, lay in zip(y, pts)], [lay["ci95"][1] - r for r, lay in zip(y, pts)]]
    ax.errorbar(x, y, yerr=err, fmt="o", ms=4, capsize=2, alpha=0.8)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_xlabel("layer sparsity (%)")
    ax.set_ylabel("dense / sparse time")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)
