"""Per-layer times of an eager program.pt2 run, for the dense and the sparse model.

The module runs under `torch.profiler` through a `torch.fx.Interpreter`
that wraps each node in ``record_function("layer::<name>")``; a node belongs
to the layer whose weight it reads (``conv1.weight`` -> ``conv1``), else to
the innermost module in its ``nn_module_stack``. Interpreting adds Python
overhead per node, so the per-layer sum is compared with the profiled
end-to-end time of the same interpreted runs. Dense and sparse run
interleaved in one profiler session, so per-layer ratios pair by run.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sparsecc.bundle.reader import Variant
from .runners import load_variant

__all__ = ["profile_torch"]

_WARMUP = 2
_PREFIX = "layer::"
_RUN = "sparsecc::run"


def _node_layer(node: Any) -> tuple[str, bool]:
    weighted = any(k in str(node.target) for k in ("conv", "linear", "matmul", "addmm", "mm"))
    for a in node.args if weighted else ():
        if getattr(a, "op", None) == "get_attr" and str(a.target).endswith(".weight"):
            return str(a.target)[: -len(".weight")], True
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        return str(path).replace("L['self'].", "").replace("L__self__.", ""), False
    return node.name, False


def _interpreter(v: Variant, threads: int | None) -> tuple[Any, dict[Any, tuple[str, bool]], dict[str, str]]:
    import torch
    import torch.fx

    gm = load_variant(v, threads).handle
    layers = {n: _node_layer(n) for n in gm.graph.nodes if n.op == "call_function"}
    layouts = {}
    for n, (lay, weighted) in layers.items():
        if weighted:
            w = gm.get_parameter(f"{lay}.weight") if hasattr(gm, "get_parameter") else None
            layouts[lay] = "runs dense" if w is None or w.layout == torch.strided else "runs sparse"
    prefix = f"{v.name}|{_PREFIX}"

    class _Timed(torch.fx.Interpreter):
        def run_node(self, n):
            lay = layers.get(n)
            if lay is None:
                return super().run_node(n)
            with torch.profiler.record_function(prefix + lay[0]):
                return super().run_node(n)

    return _Timed(gm), layers, layouts


def profile_torch(variants: dict[str, Variant], threads: int | None, inputs: Sequence[np.ndarray],
                  iterations: int = 10) -> dict[str, Any]:
    """Same shape as `profile_onnx`: ``{variant: {"e2e_ms", "layers"}}``; variants run interleaved."""
    import torch

    interps = {name: _interpreter(v, threads) for name, v in variants.items()}
    args = [torch.from_numpy(a) for a in inputs]
    names = list(interps)
    with torch.inference_mode():
        for _ in range(_WARMUP):
            for name in names:
                interps[name][0].run(*args)
        # one profiler session for all runs: starting and stopping it per run costs more than a small model
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for i in range(iterations):
                for name in (names if i % 2 == 0 else names[::-1]):
                    with torch.profiler.record_function(f"{_RUN}|{name}"):
                        interps[name][0].run(*args)
    events = list(prof.events())
    out = {}
    for name in names:
        out[name] = _collect(events, name, interps[name][1])
        # a strided (dense) weight runs dense kernels whatever its zeros
        out[name]["support"] = interps[name][2]
    return out


def _collect(events: list[Any], name: str, layers: dict[Any, tuple[str, bool]]) -> dict[str, Any]:
    runs = sorted((ev.time_range.start, ev.time_range.end) for ev in events if ev.name == f"{_RUN}|{name}")
    starts = np.array([r[0] for r in runs])
    prefix = f"{name}|{_PREFIX}"
    per_run: list[dict[str, float]] = [{} for _ in runs]
    for ev in events:
        if ev.name.startswith(prefix):
            i = int(np.searchsorted(starts, ev.time_range.start, side="right")) - 1
            if 0 <= i < len(runs):
                key = ev.name[len(prefix):]
                per_run[i][key] = per_run[i].get(key, 0.0) + ev.cpu_time_total / 1e3
    prunable = {lay: p for lay, p in layers.values()}
    keys = sorted({k for r in per_run for k in r})
    return {
        "e2e_ms": [(end - start) / 1e3 for start, end in runs],
        "layers": {k: {"ms": [r.get(k, 0.0) for r in per_run], "prunable": prunable.get(k, False),
                       "nodes": sorted(n.name for n, (lay, _) in layers.items() if lay == k)} for k in keys},
    }
