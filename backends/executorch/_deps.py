"""Lazy imports of the ExecuTorch backend's optional dependencies.

Each helper returns the module or raises a one-line `MissingDependencyError`
that names the extra to install, so importing the backend never needs them.
"""

from __future__ import annotations

from typing import Any

from sparsecc.backends.base import require

__all__ = [
    "exir",
    "exir_backend_utils",
    "exir_passes",
    "config_partitioner",
    "xnnpack_partitioner",
    "runtime",
    "portable_lib",
    "serialize",
    "xnnpack_serialization",
    "flatbuffer",
    "zstandard",
    "BACKEND",
    "EXTRA",
]

BACKEND = "executorch"
EXTRA = "executorch"


def exir() -> Any:
    return require(BACKEND, "executorch.exir", EXTRA)


def exir_backend_utils() -> Any:
    return require(BACKEND, "executorch.exir.backend.utils", EXTRA)


def exir_passes() -> Any:
    return require(BACKEND, "executorch.exir.passes", EXTRA)


def config_partitioner() -> Any:
    return require(BACKEND, "executorch.exir.backend.canonical_partitioners.config_partitioner", EXTRA)


def xnnpack_partitioner() -> Any:
    return require(BACKEND, "executorch.backends.xnnpack.partition.xnnpack_partitioner", EXTRA)


def runtime() -> Any:
    return require(BACKEND, "executorch.runtime", EXTRA)


def portable_lib() -> Any:
    # The runtime's thread-pool controls live only in the pybindings module.
    return require(BACKEND, "executorch.extension.pybindings.portable_lib", EXTRA)


def serialize() -> Any:
    """ExecuTorch's (private) .pte reader; pinned by the executorch==1.5.1 extra."""
    return require(BACKEND, "executorch.exir._serialize._program", EXTRA)


def xnnpack_serialization() -> Any:
    """XNNPACK's delegate serializer: its header format; its package holds the schema."""
    return require(BACKEND, "executorch.backends.xnnpack.serialization.xnnpack_graph_serialize", EXTRA)


def flatbuffer() -> Any:
    """ExecuTorch's (private) wrapper around the ``flatc`` binary it ships."""
    return require(BACKEND, "executorch.exir._serialize._flatbuffer", EXTRA)


def zstandard() -> Any:
    return require(BACKEND, "zstandard", EXTRA)
