"""sparsecc: a sparsity compiler for PyTorch models.

Capture a model with `torch.export`, choose sparse masks for its weights,
rewrite and verify the graph, and lower it to deployable artifacts.

Names are loaded on first use (PEP 562): ``import sparsecc`` does not import
torch, so tools that need only a runtime (``sparsecc bench`` on an ONNX
bundle) start fast and keep torch out of the measured process.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_NAMES = {
    "capture": "core.capture",
    "CaptureError": "core.capture",
    "sparsify": "flows.sparsify",
    "SparsifyResult": "flows.sparsify",
    "NoPrunableLayersError": "flows.sparsify",
    "mask_specs": "flows.sparsify",
    "find_prunable_weights": "core.analyze",
    "Analysis": "core.analyze",
    "PrunableWeight": "core.analyze",
    "SparsityPattern": "core.ir",
    "MaskSpec": "core.ir",
    "Recipe": "plan.recipe",
    "RecipeError": "plan.recipe",
    "load_recipe": "plan.recipe",
    "SparsityReport": "flows.report",
    "PassBase": "core.pass_infra",
    "PassManager": "core.pass_infra",
    "PassResult": "core.pass_infra",
    "PassError": "core.pass_infra",
    "save_program": "core.program",
    "load_program": "core.program",
    "bench": "benchmarking.api",
    "CalibrationData": "plan.calibrate",
    "calibration_for": "plan.calibrate",
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
