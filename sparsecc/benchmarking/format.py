"""Short human-readable strings shared by the Markdown and HTML reports."""

from __future__ import annotations

from typing import Any

from .stats import FASTER, SLOWER

__all__ = ["ms", "size", "ratio_text", "recipe_text", "machine_line", "dims_text"]


def ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, f in (("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


def ratio_text(cmp: dict[str, Any] | None) -> str:
    """``1.23x [1.10, 1.31]: faster``; a CI that contains 1 is never called a speedup."""
    if not cmp or cmp.get("ratio") is None:
        return "no dense reference"
    lo, hi = cmp["ci95"]
    label = cmp["label"]
    head = f"{cmp['ratio']:.2f}x [{lo:.2f}, {hi:.2f}]"
    if label == FASTER:
        return f"{head}: sparse faster"
    if label == SLOWER:
        return f"{head}: sparse slower"
    return f"{head}: no measurable change"


def recipe_text(recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return "dense"
    s = recipe.get("sparsity")
    return f"{recipe.get('pattern', '?')} {s:.0%}" if isinstance(s, (int, float)) else str(recipe.get("pattern", "?"))


def dims_text(dims: dict[str, int] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (dims or {}).items()) or "static"


def machine_line(m: dict[str, Any]) -> str:
    v = m.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "executorch", "torch", "numpy") if k in v)
    load = m.get("load_avg") or []
    end = m.get("load_avg_end") or []
    return (f"{m.get('cpu')} ({', '.join(m.get('cpu_flags') or []) or 'no listed flags'}), {m.get('cores')} cores, "
            f"{m.get('os')}, Python {m.get('python')}; {libs}; load avg {load[0] if load else '?'}"
            f" at start, {end[0] if end else '?'} at end")
