"""`bench_files`: time plain model files (``model.onnx``, ``model.pte``), not only bundles.

One file is timed alone; two or more are timed interleaved in one process
and compared with the first (``bench dense.onnx sparse.onnx``), with the same
bootstrap ratio as a bundle's dense/sparse pair. Input shapes come from the
file (ONNX: its declared inputs; ``.pte``: the method's metadata); a symbolic
dim takes its size from ``shapes`` or 1.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sparsecc.bundle.reader import Variant
from sparsecc.errors import BenchError, UsageError
from .host import host_info
from .inputs import _values
from .measure import time_interleaved
from .runners import Loaded, load_variant
from .stats import bootstrap_ratio, summarize, verdict

__all__ = ["bench_files", "FILE_BACKENDS"]

FILE_BACKENDS = {".onnx": "onnx", ".pte": "executorch"}
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(int8)": "int8",
                "tensor(uint8)": "uint8"}

# ExecuTorch's ScalarType codes (c10 numbering) for the input dtypes bench can generate.
_ET_DTYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64", 11: "bool"}


def _onnx_inputs(path: Path) -> list[dict[str, Any]]:
    from .runners import _ort

    try:
        session = _ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a file it cannot parse
        raise BenchError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from e
    specs = []
    for i in session.get_inputs():
        if i.type not in _ONNX_DTYPES:
            raise BenchError(f"{path}: input {i.name!r} has type {i.type}, which bench cannot generate")
        shape = [d if isinstance(d, int) else (d or f"dim{k}") for k, d in enumerate(i.shape)]
        specs.append({"name": i.name, "shape": shape, "dtype": _ONNX_DTYPES[i.type]})
    return specs


def _pte_inputs(path: Path) -> list[dict[str, Any]]:
    from sparsecc.backends.executorch import _deps

    try:
        meta = _deps.runtime().Runtime.get().load_program(path).metadata("forward")
        n = meta.num_inputs()
        tensors = [meta.input_tensor_meta(i) for i in range(n)]
    except Exception as e:  # the runtime's own error types: name the file
        raise BenchError(f"{path}: not a loadable ExecuTorch program ({type(e).__name__}: {e})") from e
    specs = []
    for i, t in enumerate(tensors):
        dtype = _ET_DTYPES.get(int(t.dtype()))
        if dtype is None:
            raise BenchError(f"{path}: input {i} has ExecuTorch scalar type {int(t.dtype())}, which bench cannot "
                             "generate")
        specs.append({"name": f"input_{i}", "shape": list(t.sizes()), "dtype": dtype})
    return specs


def _variant(path: Path, name: str) -> tuple[Variant, list[dict[str, Any]]]:
    backend = FILE_BACKENDS.get(path.suffix)
    if backend is None:
        raise UsageError(f"{path}: bench takes a bundle folder, a .onnx or a .pte file")
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    inputs = _onnx_inputs(path) if backend == "onnx" else _pte_inputs(path)
    artifact = {"backend": backend, "inputs": inputs, "outputs": [], "files": {"model": path.name}}
    return Variant(name, backend, path, artifact, path.parent), inputs


def _arrays(inputs: list[dict[str, Any]], shapes: dict[str, Sequence[int]], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for spec in inputs:
        declared = spec["shape"]
        shape = tuple(shapes.get(spec["name"], [d if isinstance(d, int) else 1 for d in declared]))
        if len(shape) != len(declared) or any(isinstance(d, int) and d != s for d, s in zip(declared, shape)):
            raise UsageError(f"--shapes {spec['name']}: {shape} does not fit the declared shape {declared}")
        out.append(_values(spec, shape, None, rng))
    return out


def _short_names(paths: Sequence[Path]) -> list[str]:
    """The fewest trailing path parts that tell the files apart (dense/onnx/model.onnx vs onnx/model.onnx)."""
    for k in range(1, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.parts[-k:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def bench_files(
    paths: Sequence[str | Path], *, shapes: dict[str, Sequence[int]] | None = None, threads: int | None = 1,
    warmup: int = 10, runs: int | None = 100, time_budget_s: float | None = None, seed: int = 0,
    progress: Callable[[float, float], None] | None = None,
) -> dict[str, Any]:
    """Latency of each file; with two or more, each one's ratio against the first (above 1: faster)."""
    paths = [Path(p) for p in paths]
    names = _short_names(paths)
    variants = [_variant(p, n) for p, n in zip(paths, names)]
    signatures = {tuple((s["name"], s["dtype"], len(s["shape"])) for s in inputs) for _, inputs in variants}
    if len(signatures) > 1:
        raise UsageError(f"{', '.join(map(str, paths))}: the files take different inputs; compare files "
                         "of one model")
    inputs = _arrays(variants[0][1], dict(shapes or {}), seed)
    loaded: list[Loaded] = [load_variant(v, threads) for v, _ in variants]
    timing = time_interleaved(loaded, inputs, warmup=warmup, runs=runs, time_budget_s=time_budget_s,
                              progress=progress)
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].ndim else 1
    files = []
    base = names[0]
    for (v, _), ld in zip(variants, loaded):
        samples = timing.samples_ms.get(v.name, [])
        rec = {"file": str(v.path), "name": v.name, "backend": v.backend, "bytes": v.path.stat().st_size,
               "load_s": ld.load_s, "latency_ms": summarize(samples, batch), "comparison": None}
        if v.name != base and samples:
            b = bootstrap_ratio(timing.samples_ms[base], samples, seed=seed)
            rec["comparison"] = {**b, "label": verdict(b["ci95"]), "against": base,
                                 "definition": f"{base} p50 / this p50 (above 1: this is faster); "
                                               "paired moving-block bootstrap 95% CI"}
        files.append(rec)
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": host_info(), "interrupted": timing.interrupted,
        "settings": {"threads": threads, "warmup": warmup, "runs": runs, "time_budget_s": time_budget_s,
                     "seed": seed, "shapes": {s["name"]: list(a.shape) for s, a in zip(variants[0][1], inputs)}},
        "files": files,
    }
