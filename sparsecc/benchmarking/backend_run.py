"""Benchmark one backend of one bundle at one thread setting: dense and sparse, in this process.

This is what a worker process runs (see worker.py): peak resident memory is
then the peak of this one measurement, and ExecuTorch's thread pool is sized
once per process as it must be.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

from sparsecc.bundle.reader import DENSE, SPARSE, Bundle
from sparsecc.errors import BenchError
from .inputs import build_inputs
from .int8_reference import INT8_DENSE, INT8_SPARSE, int8_dense_variant, int8_sparse_variant
from .layers import coverage, layer_table
from .measure import time_interleaved
from .memory import PEAK_RSS_METHOD, peak_rss_mb, rss_mb
from .runners import load_variant
from .sizes import file_sizes
from .stats import bootstrap_ratio, summarize, verdict

__all__ = ["run_backend", "PROFILE_NOTES"]

PROFILE_NOTES = {
    "onnx": "ONNX Runtime profiler (enable_profiling): per-node kernel times, mapped to layers through the bundle's ONNX provenance",
    "onnx-custom-ops": "ONNX Runtime profiler (enable_profiling): per-node kernel times, mapped to layers through the "
                       "bundle's ONNX provenance (sparsecc custom-op nodes by the layer they replaced)",
    "torch": "torch.profiler over a torch.fx.Interpreter run that labels each node with its layer; the interpreter's own Python overhead is not in any layer",
    "torch-sparse": "not profiled per layer here: the bundle's torch-sparse/kernels.json holds each layer's measured dense and sparse kernel times",
    "executorch": "ExecuTorch ETDump (enable_etdump): per-XNNPACK-operator times; XNNPACK's operator names do not say which layer they run (that needs an ETRecord, which bundles do not hold), so times are per operator, not per layer",
    "executorch-custom-ops": "ExecuTorch ETDump, as for executorch; sparsecc's kernels show as the operators "
                             "sparsecc::et_sparse_linear.out / et_sparse_conv1x1.out",
}


def _variant_files(v) -> dict[str, Any]:
    files = {role: {"path": str(p), **file_sizes(p)} for role, p in v.files().items() if p.exists()}
    model = files.get("model", {})
    return {"files": files, "bytes": model.get("bytes"), "zstd_bytes": model.get("zstd_bytes")}


def _profile(backend: str, variants: dict, threads: int | None, inputs, iterations: int) -> dict[str, Any]:
    variants = {k: v for k, v in variants.items() if k in (SPARSE, DENSE)}
    if backend in ("onnx", "onnx-custom-ops"):
        from .profile_ort import profile_onnx
        return profile_onnx(variants, threads, inputs, iterations)
    if backend == "torch":
        from .profile_torch import profile_torch
        return profile_torch(variants, threads, inputs, iterations)
    if backend in ("executorch", "executorch-custom-ops"):
        from .profile_executorch import profile_executorch
        return profile_executorch(variants, inputs, iterations)
    return {}


def run_backend(
    bundle_path: str, backend: str, threads: int | None, *, batch: int | None = None, seq: int | None = None,
    warmup: int = 10, runs: int | None = 100, time_budget_s: float | None = None, profile: bool = True,
    profile_runs: int = 20, seed: int = 0, progress: Callable[[float, float], None] | None = None,
    int8_model: str | None = None, int8_sparse_model: str | None = None,
) -> dict[str, Any]:
    """A run record (see schema.py, ``runs[]``). ``int8_model``: ONNX Runtime's int8 copy of the dense
    model (`int8_reference.int8_dense_copy`), timed as one more dense reference; ``int8_sparse_model``:
    the same copy of the sparse model, timed too and compared with the dense one (``int8_both``)."""
    rec: dict[str, Any] = {"backend": backend, "threads": threads, "status": "ok", "error": None}
    t_start = time.perf_counter()
    try:
        bundle = Bundle(bundle_path)
        inputs, dims = build_inputs(bundle.path, bundle.inputs, bundle.dynamic_dims, batch, seq, seed)
        rec["dims"] = dims
        batch_size = dims.get("batch", 1)
        variants = {n: bundle.variant(backend, n) for n in (SPARSE, DENSE)}
        variants = {n: v for n, v in variants.items() if v is not None}
        variants.update(bundle.reference_variants(backend))
        if int8_model:
            variants[INT8_DENSE] = int8_dense_variant(bundle, Path(int8_model))
        if int8_model and int8_sparse_model:
            variants[INT8_SPARSE] = int8_sparse_variant(bundle, Path(int8_sparse_model))
        if SPARSE not in variants:
            raise BenchError(f"bundle {bundle.path} has no {backend} artifact (targets: {', '.join(bundle.backends())})")
        loaded, vrec = [], {}
        for name, v in variants.items():
            before = rss_mb()
            ld = load_variant(v, threads)
            after = rss_mb()
            loaded.append(ld)
            in_bundle = v.path.is_relative_to(bundle.path)
            vrec[name] = {"model_file": str(v.path.relative_to(bundle.path) if in_bundle else v.path),
                          **_variant_files(v),
                          "first_load_s": ld.load_s, "load_s": ld.load_s,
                          "rss_growth_mb": (after - before) if before and after else None}
        timing = time_interleaved(loaded, inputs, warmup=warmup, runs=runs, time_budget_s=time_budget_s,
                                  progress=progress)
        for name, samples in timing.samples_ms.items():
            vrec[name].update(first_run_ms=timing.first_run_ms.get(name), latency_ms=summarize(samples, batch_size),
                              samples_ms=samples)
        rec["variants"] = vrec
        rec["comparison"] = None
        if DENSE in timing.samples_ms:
            b = bootstrap_ratio(timing.samples_ms[DENSE], timing.samples_ms[SPARSE], seed=seed)
            rec["comparison"] = {**b, "label": verdict(b["ci95"]),
                                 "definition": "dense p50 / sparse p50 (above 1: sparse is faster); paired moving-block bootstrap 95% CI"}
        if INT8_SPARSE in timing.samples_ms:
            b = bootstrap_ratio(timing.samples_ms[INT8_DENSE], timing.samples_ms[INT8_SPARSE], seed=seed)
            rec["int8_both"] = {**b, "label": verdict(b["ci95"]), "definition":
                                f"{INT8_DENSE} p50 / {INT8_SPARSE} p50: both models quantized by ONNX Runtime's "
                                "quantize_dynamic (above 1: sparse is faster); paired moving-block bootstrap 95% CI"}
        refs = {n: s for n, s in timing.samples_ms.items() if n not in (SPARSE, DENSE, INT8_SPARSE)}
        if refs:
            rec["references"] = {
                n: {**(b := bootstrap_ratio(s, timing.samples_ms[SPARSE], seed=seed)), "label": verdict(b["ci95"]),
                    "definition": f"{n} p50 / sparse p50 (above 1: sparse is faster); paired moving-block bootstrap 95% CI"}
                for n, s in refs.items()}
        rec["peak_rss_mb"] = peak_rss_mb()
        rec["peak_rss_method"] = PEAK_RSS_METHOD
        if not timing.interrupted:
            # the first load in a process also pays the runtime's one-time set-up; a second load of
            # each model is what that model costs (taken after the peak memory reading)
            for name, v in variants.items():
                if name in (SPARSE, DENSE):
                    vrec[name]["load_s"] = load_variant(v, threads).load_s
        rec["profile"] = None
        if timing.interrupted:
            rec["status"] = "interrupted"
        elif profile:
            rec["profile"] = _layer_profile(bundle, backend, variants, threads, inputs, profile_runs, seed)
        del loaded
    except KeyboardInterrupt:
        rec["status"] = "interrupted"
    except Exception as e:  # one backend failing must not lose the others' results
        rec["status"] = "error"
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["traceback"] = traceback.format_exc(limit=6)
    rec["wall_s"] = time.perf_counter() - t_start
    return rec


def _layer_profile(bundle: Bundle, backend: str, variants: dict, threads, inputs, iterations: int,
                   seed: int) -> dict[str, Any]:
    note = PROFILE_NOTES.get(backend, "")
    profiles = _profile(backend, variants, threads, inputs, iterations)
    if not profiles:
        return {"available": False, "method": note, "layers": [], "missing": [], "coverage": {}}
    if backend in ("executorch", "executorch-custom-ops"):
        return _operator_profile(bundle, note, profiles, iterations, seed)
    checks = {lay["layer"]: c for lay in bundle.sparse_layers if (c := bundle.check_reason(backend, lay["layer"]))}
    for layer, support in (profiles.get("sparse") or {}).get("support", {}).items():
        checks.setdefault(layer, {"support": support, "reason": "weight layout in the loaded program"})
    rows, missing = layer_table(bundle.sparse_layers, profiles, checks, seed=seed)
    rest = ("the interpreter's Python overhead between nodes" if backend == "torch" else
            "runtime overhead outside operator kernels (input/output copies, scheduling, memory planning)")
    cov = {name: coverage(p, rest) for name, p in profiles.items()}
    import numpy as np

    other = {name: {k: float(np.median(v["ms"])) for k, v in p["layers"].items()} for name, p in profiles.items()}
    return {"available": True, "method": note, "iterations": iterations, "layers": rows, "missing": missing,
            "coverage": cov, "all_layers_ms": other}


def _operator_profile(bundle: Bundle, note: str, profiles: dict[str, Any], iterations: int, seed: int) -> dict[str, Any]:
    """Per-operator dense vs sparse rows (ExecuTorch), paired by operator name."""
    import numpy as np

    from .stats import bootstrap_ratio, verdict

    sparse, dense = profiles.get("sparse", {}), profiles.get("dense", {})
    rows = []
    for op, s_ms in (sparse.get("operators") or {}).items():
        d_ms = (dense.get("operators") or {}).get(op)
        row = {"operator": op, "sparse_ms": float(np.median(s_ms)) if s_ms else None,
               "dense_ms": float(np.median(d_ms)) if d_ms else None, "ratio": None, "ci95": None, "label": None}
        if s_ms and d_ms:
            b = bootstrap_ratio(d_ms, s_ms, seed=seed)
            row.update(ratio=b["ratio"], ci95=b["ci95"], label=verdict(b["ci95"]))
        rows.append(row)
    rows.sort(key=lambda r: -(r["dense_ms"] or r["sparse_ms"] or 0.0))
    cov = {name: coverage({"e2e_ms": p["e2e_ms"], "layers": {k: {"ms": v} for k, v in p["operators"].items()}},
                          "the runtime's own work around the delegates (method execution, copies)")
           for name, p in profiles.items()}
    return {"available": True, "method": note, "iterations": iterations, "layers": [],
            "missing": [lay["layer"] for lay in bundle.sparse_layers], "operators": rows, "coverage": cov,
            "layer_mapping": False}
