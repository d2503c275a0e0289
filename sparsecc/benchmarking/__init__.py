"""Benchmark a bundle on the machine it runs on: dense vs sparse, layer by layer.

``bench(bundles, ...)`` loads each bundle's artifacts (ONNX Runtime,
ExecuTorch, eager PyTorch), times the dense reference and the sparse model
interleaved in one process, profiles them per layer, and returns a
`BenchResult` that writes JSON (schema in `schema`), Markdown and HTML.

Importing this package does not import torch: the ONNX Runtime path needs
only onnxruntime and numpy, so a bundle can be benchmarked on a device that
has nothing else installed. torch is imported by the torch and ExecuTorch
paths only.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "bench": "api",
    "BenchResult": "result",
    "BenchError": "sparsecc.errors",
    "SCHEMA": "schema",
    "SCHEMA_ID": "schema",
    "validate": "schema",
    "SchemaError": "schema",
    "to_markdown": "markdown",
    "compare_markdown": "markdown",
    "to_html": "html",
    "bootstrap_ratio": "stats",
    "verdict": "stats",
    "build_inputs": "inputs",
}

__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module if "." in module else f".{module}", __name__), name)
    globals()[name] = value
    return value
