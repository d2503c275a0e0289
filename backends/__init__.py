"""Deployment targets. Each sub-package registers one backend on import.

Importing a backend package is cheap: its runtime (onnxruntime, executorch)
is imported only when it is used, and a missing one raises a one-line
`MissingDependencyError` naming the extra to install.
"""

import importlib

from .base import (
    Artifact,
    Backend,
    InputMismatchError,
    LayerCheck,
    LowerOptions,
    LoweringError,
    MissingDependencyError,
    PatternCheck,
    Runner,
    Support,
    TensorSpec,
    available_backends,
    check_inputs,
    get_backend,
    register_backend,
    user_input_specs,
    user_output_names,
)

for _name in ("onnx", "executorch", "tensorrt", "torch_sparse"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as e:  # the package folder itself, not an optional runtime
        if e.name != f"{__name__}.{_name}":
            raise

__all__ = [
    "Artifact",
    "Backend",
    "InputMismatchError",
    "LayerCheck",
    "LowerOptions",
    "LoweringError",
    "MissingDependencyError",
    "PatternCheck",
    "Runner",
    "Support",
    "TensorSpec",
    "available_backends",
    "check_inputs",
    "get_backend",
    "register_backend",
    "user_input_specs",
    "user_output_names",
]
