"""Lazy imports of the TensorRT backends' optional dependencies.

Each helper returns the module or raises a one-line `MissingDependencyError`
that names the extra to install, so importing the backend never needs them.
"""

from __future__ import annotations

from typing import Any

from sparsecc.backends.base import require

__all__ = ["onnx", "onnxruntime", "tensorrt", "BACKEND", "EXTRA"]

BACKEND = "tensorrt"
EXTRA = "tensorrt"


def onnx() -> Any:
    return require(BACKEND, "onnx", "onnx")


def onnxruntime() -> Any:
    return require(BACKEND, "onnxruntime", "onnx")


def tensorrt() -> Any:
    # The PyPI `tensorrt` wheel pulls the libraries from NVIDIA's index; on a
    # machine without them the import fails and this says what to install.
    return require(BACKEND, "tensorrt", EXTRA)
