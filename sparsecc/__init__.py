"""sparsecc: a sparsity compiler for PyTorch models.

Capture a model with `torch.export`, choose sparse masks for its weights,
rewrite and verify the graph, and lower it to deployable artifacts.
"""

from .analyze import Analysis, PrunableWeight, find_prunable_weights
from .api import NoPrunableLayersError, SparsifyResult, mask_specs, sparsify
from .capture import CaptureError, capture
from .ir import MaskSpec, SparsityPattern
from .pass_infra import PassBase, PassError, PassManager, PassResult
from .program import load_program, save_program
from .recipe import Recipe, RecipeError, load_recipe
from .report import SparsityReport

__version__ = "0.1.0"

__all__ = [
    "capture",
    "CaptureError",
    "sparsify",
    "SparsifyResult",
    "NoPrunableLayersError",
    "mask_specs",
    "find_prunable_weights",
    "Analysis",
    "PrunableWeight",
    "SparsityPattern",
    "MaskSpec",
    "Recipe",
    "RecipeError",
    "load_recipe",
    "SparsityReport",
    "PassBase",
    "PassManager",
    "PassResult",
    "PassError",
    "save_program",
    "load_program",
]
