"""sparsecc: a sparsity compiler for PyTorch models.

Capture a model with `torch.export`, choose sparse masks for its weights,
rewrite and verify the graph, and lower it to deployable artifacts.

Names are loaded on first use (PEP 562): ``import sparsecc`` does not import
torch, so tools that need only a runtime (``sparsecc bench`` on an ONNX
bundle) start fast and keep torch out of the measured process.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_NAMES = {
    "capture": "capture",
    "CaptureError": "capture",
    "sparsify": "api",
    "SparsifyResult": "api",
    "NoPrunableLayersError": "api",
    "mask_specs": "api",
    "find_prunable_weights": "analyze",
    "Analysis": "analyze",
    "PrunableWeight": "analyze",
    "SparsityPattern": "ir",
    "MaskSpec": "ir",
    "Recipe": "recipe",
    "RecipeError": "recipe",
    "load_recipe": "recipe",
    "SparsityReport": "report",
    "PassBase": "pass_infra",
    "PassManager": "pass_infra",
    "PassResult": "pass_infra",
    "PassError": "pass_infra",
    "save_program": "program",
    "load_program": "program",
    "bench": "benchmarking.api",
    "CalibrationData": "calibrate",
    "calibration_for": "calibrate",
}

__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'sparsecc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps a public function whose name is also a submodule (``capture``) bound to the function.

    Importing ``sparsecc.capture`` binds the submodule on the package; the eager
    ``from .capture import capture`` this replaces used to rebind the function.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _NAMES.get(name) == name:
            self.__dict__.pop(name, None)  # resolve through __getattr__ to the function
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
