"""Lazy imports of the ONNX backend's optional dependencies.

Each helper returns the module or raises a one-line `MissingDependencyError`
that names the extra to install, so importing the backend never needs them.
"""

from __future__ import annotations

from typing import Any

from sparsecc.backends.base import require

__all__ = ["onnx", "onnxruntime", "graphsurgeon", "onnxscript", "BACKEND", "EXTRA"]

BACKEND = "onnx"
EXTRA = "onnx"


def onnx() -> Any:
    return require(BACKEND, "onnx", EXTRA)


def onnxruntime() -> Any:
    return require(BACKEND, "onnxruntime", EXTRA)


def graphsurgeon() -> Any:
    return require(BACKEND, "onnx_graphsurgeon", EXTRA)


def onnxscript() -> Any:
    # The dynamo exporter builds its graph with onnxscript; import it up front
    # so a missing install fails with our message, not deep in torch.onnx.
    return require(BACKEND, "onnxscript", EXTRA)
