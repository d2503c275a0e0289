"""Graph passes over `torch.export.ExportedProgram`s, one pass per file."""

from .activation_sparsity import ActivationSparsityPass
from .compute_masks import ComputeMasksPass
from .fold_masks import FoldMasksPass
from .insert_masks import InsertMasksPass, mask_target
from .quantize_weights import QuantizeWeightsPass

__all__ = [
    "ActivationSparsityPass",
    "ComputeMasksPass",
    "InsertMasksPass",
    "FoldMasksPass",
    "mask_target",
    "QuantizeWeightsPass",
]
