"""The JSON schema of a bench result (``RUN.json``), and a small validator for it.

Schema id ``sparsecc-bench/1``. Field meanings::

    schema       "sparsecc-bench/1"
    created      ISO 8601 UTC time the run started
    interrupted  true when Ctrl-C stopped the run; the results gathered so far are kept
    machine      cpu, cpu_flags, cores, load_avg [1, 5, 15 min] at start (load_avg_end at the end),
                 os, python, versions {library: version}, torch_threads (null when torch was not loaded)
    settings     backends, threads (list), batch, seq, warmup, runs, time_budget_s, profile,
                 profile_runs, seed, isolate (one process per backend x threads)
    bundles[]    path, model, recipe, sparse_layers (count), layers[] (layer, role, pattern, achieved)
      runs[]     one per backend x thread setting
        backend, threads, status ("ok" | "interrupted" | "error"), error, dims {dim: size}
        variants {"sparse": V, "dense": V}, V =
            model_file, files {role: {path, bytes, zstd_bytes}}, bytes, zstd_bytes,
            load_s (load and initialisation, second load in the process), first_load_s (first load,
            with the runtime's one-time set-up), first_run_ms, rss_growth_mb,
            latency_ms {n, min, p50, p90, p99, mean, std, throughput_per_s}, samples_ms [...]
        references   {name: comparison against sparse of another dense model timed interleaved with
                     the two above}; its variant is in variants too. "onnx-dense" (torch-sparse):
                     ONNX Runtime's fp32 dense model; "onnx-int8-dense" (CPU backends): ONNX Runtime's
                     quantize_dynamic of it (int8 per-channel weights), the best dense alternative
        int8_both    (onnx) the same comparison with both models quantized by ONNX Runtime's
                     quantize_dynamic: "onnx-int8-dense" p50 / "onnx-int8-sparse" p50 (both in variants)
        comparison   ratio (dense p50 / sparse p50, above 1: sparse faster), ci95 [lo, hi]
                     (paired moving-block percentile bootstrap), n, resamples, seed, method,
                     label ("faster" | "slower" | "no measurable change"), definition
        peak_rss_mb, peak_rss_method   peak resident memory of the worker process
        profile      null, or {available, method, iterations, layers[], missing[], coverage, all_layers_ms}
            layers[]  layer, role, pattern, sparsity, flops, backend_support, dense_ms, sparse_ms
                      (medians over profiled runs), ratio, ci95, label, verdict, nodes {sparse, dense}
            coverage {variant: {layers_ms, e2e_ms, fraction, within_tolerance, note}}
            operators[] (ExecuTorch only: per XNNPACK operator, not mapped to layers; layer_mapping false)
                      operator, dense_ms, sparse_ms, ratio, ci95, label
        wall_s

All times are milliseconds unless the name says otherwise (``_s``).
"""

from __future__ import annotations

from typing import Any
from sparsecc.errors import SparseccError

__all__ = ["SCHEMA", "SCHEMA_ID", "SchemaError", "validate"]

SCHEMA_ID = "sparsecc-bench/1"

_NUM = {"type": ["number", "null"]}
_STATS = {
    "type": "object",
    "required": ["n", "min", "p50", "p90", "p99", "mean", "std", "throughput_per_s"],
    "properties": {k: _NUM for k in ("min", "p50", "p90", "p99", "mean", "std", "throughput_per_s")} | {"n": {"type": "integer"}},
}
_VARIANT = {
    "type": "object",
    "required": ["model_file", "files", "bytes", "zstd_bytes", "load_s", "latency_ms", "samples_ms"],
    "properties": {
        "model_file": {"type": "string"},
        "files": {"type": "object"},
        "bytes": {"type": "integer"},
        "zstd_bytes": {"type": ["integer", "null"]},
        "load_s": {"type": "number"},
        "first_run_ms": _NUM,
        "rss_growth_mb": _NUM,
        "latency_ms": _STATS,
        "samples_ms": {"type": "array", "items": {"type": "number"}},
    },
}
_COMPARISON = {
    "type": ["object", "null"],
    "required": ["ratio", "ci95", "label", "n", "seed"],
    "properties": {
        "ratio": _NUM,
        "ci95": {"type": ["array", "null"], "items": {"type": "number"}},
        "label": {"enum": ["faster", "slower", "no measurable change"]},
        "n": {"type": "integer"},
        "seed": {"type": "integer"},
    },
}
_LAYER = {
    "type": "object",
    "required": ["layer", "sparsity", "dense_ms", "sparse_ms", "ratio", "ci95", "verdict"],
    "properties": {"layer": {"type": "string"}, "dense_ms": _NUM, "sparse_ms": _NUM, "ratio": _NUM,
                   "verdict": {"type": "string"}},
}
_PROFILE = {
    "type": ["object", "null"],
    "required": ["available", "method", "layers", "missing", "coverage"],
    "properties": {"available": {"type": "boolean"}, "method": {"type": "string"},
                   "layers": {"type": "array", "items": _LAYER}, "missing": {"type": "array", "items": {"type": "string"}},
                   "operators": {"type": "array", "items": {"type": "object", "required": ["operator", "dense_ms", "sparse_ms", "ratio"]}},
                   "coverage": {"type": "object"}},
}
_RUN = {
    "type": "object",
    "required": ["backend", "threads", "status", "error"],
    "properties": {
        "backend": {"enum": ["onnx", "onnx-custom-ops", "executorch", "executorch-custom-ops", "torch", "torch-sparse"]},
        "threads": {"type": ["integer", "null"]},
        "status": {"enum": ["ok", "interrupted", "error"]},
        "error": {"type": ["string", "null"]},
        "dims": {"type": "object"},
        "variants": {"type": "object", "properties": {"sparse": _VARIANT, "dense": _VARIANT}, "required": ["sparse"]},
        "comparison": _COMPARISON,
        "peak_rss_mb": _NUM,
        "peak_rss_method": {"type": "string"},
        "profile": _PROFILE,
        "wall_s": {"type": "number"},
    },
}
SCHEMA: dict[str, Any] = {
    "$id": SCHEMA_ID,
    "type": "object",
    "required": ["schema", "created", "interrupted", "machine", "settings", "bundles"],
    "properties": {
        "schema": {"enum": [SCHEMA_ID]},
        "created": {"type": "string"},
        "interrupted": {"type": "boolean"},
        "machine": {"type": "object", "required": ["cpu", "cores", "load_avg", "versions"]},
        "settings": {"type": "object", "required": ["backends", "threads", "warmup", "runs", "time_budget_s", "seed"]},
        "bundles": {"type": "array", "items": {
            "type": "object", "required": ["path", "model", "runs", "layers"],
            "properties": {"path": {"type": "string"}, "model": {"type": "string"},
                           "runs": {"type": "array", "items": _RUN}, "layers": {"type": "array"}},
        }},
    },
}


class SchemaError(SparseccError, ValueError):
    """A result does not match `SCHEMA`; the message gives the JSON path at fault."""


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
          "integer": int, "number": (int, float)}


def _is(value: Any, t: str) -> bool:
    if t in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[t])


def _check(value: Any, schema: dict[str, Any], path: str) -> None:
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is(value, t) for t in types):
            raise SchemaError(f"{path}: expected {' or '.join(types)}, got {type(value).__name__} ({value!r:.60})")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise SchemaError(f"{path}: missing required field {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(value[key], sub, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]")


def validate(result: dict[str, Any]) -> None:
    """Raise `SchemaError` naming the first field that does not match `SCHEMA`.

    A subset of JSON Schema (type, enum, required, properties, items), so
    that checking a result needs no extra package.
    """
    _check(result, SCHEMA, "$")
