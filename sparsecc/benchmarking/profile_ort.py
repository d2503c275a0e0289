"""Per-layer times from ONNX Runtime's profiler, for the dense and the sparse model.

Profiling sessions are separate from the timed ones (the profiler adds
overhead of its own). The dense and sparse model run ``iterations`` times
after a warm-up, interleaved (A B B A ...); each event's ``dur`` (µs) is a node's kernel time in one run,
grouped into runs by the ``model_run`` events that contain them. A layer's
time per run is the sum of its nodes; figures are medians over runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from sparsecc.bundle.reader import Variant
from .onnx_layers import LayerMap
from .runners import load_variant

__all__ = ["profile_onnx", "parse_trace"]

_WARMUP = 3


def parse_trace(events: list[dict[str, Any]], skip: int = 0) -> tuple[list[float], list[dict[str, float]]]:
    """``(end-to-end µs per run, [{node name: µs} per run])`` from an ORT profile, first ``skip`` runs dropped."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in runs]
    starts = np.array([r["ts"] for r in runs])
    for e in nodes:
        i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if 0 <= i < len(runs) and e["ts"] <= runs[i]["ts"] + runs[i]["dur"]:
            per_run[i][e["name"]] += float(e["dur"])
    return [float(r["dur"]) for r in runs][skip:], [dict(d) for d in per_run][skip:]


def profile_onnx(variants: dict[str, Variant], threads: int | None, inputs: Sequence[np.ndarray],
                 iterations: int = 20) -> dict[str, Any]:
    """``{variant: {"e2e_ms": [...], "layers": {layer: {"ms": [...], "prunable": bool, "nodes": [...]}}}}``."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sparsecc-ortprof-") as tmp:
        # interleaved like the timed runs, so the per-layer ratios can be paired by run
        loaded = {name: load_variant(v, threads, profile_prefix=os.path.join(tmp, name)) for name, v in variants.items()}
        for i in range(_WARMUP + iterations):
            for ld in (loaded.values() if i % 2 == 0 else reversed(list(loaded.values()))):
                ld.run(inputs)
        traces = {}
        for name, ld in loaded.items():
            with open(ld.handle.end_profiling()) as f:
                traces[name] = parse_trace(json.load(f), skip=_WARMUP)
        for name, v in variants.items():
            e2e_us, per_run = traces[name]
            lmap = LayerMap(v.path, (v.artifact or {}).get("meta", {}).get("provenance", {}))
            layers: dict[str, dict[str, Any]] = {}
            for node in sorted({n for run in per_run for n in run}):
                layer, prunable = lmap.resolve(node)
                rec = layers.setdefault(layer, {"us": np.zeros(len(per_run)), "prunable": prunable, "nodes": []})
                rec["prunable"] = rec["prunable"] or prunable
                rec["nodes"].append(node.removesuffix("_kernel_time"))
                rec["us"] += np.array([run.get(node, 0.0) for run in per_run])
            out[name] = {
                "e2e_ms": [u / 1e3 for u in e2e_us],
                "layers": {k: {"ms": (r["us"] / 1e3).tolist(), "prunable": r["prunable"], "nodes": r["nodes"]}
                           for k, r in layers.items()},
            }
    return out
