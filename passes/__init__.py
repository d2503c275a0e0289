"""Graph passes over `torch.export.ExportedProgram`s, one pass per file."""

from .activation_sparsity import ActivationSparsityPass
from .block_sparse_attention import BlockSparseAttentionPass
from .compute_masks import ComputeMasksPass
from .fold_masks import FoldMasksPass
from .insert_masks import InsertMasksPass, mask_target
from .quantize_weights import QuantizeWeightsPass

__all__ = [
    "ActivationSparsityPass",
    "BlockSparseAttentionPass",
    "ComputeMasksPass",
    "InsertMasksPass",
    "FoldMasksPass",
    "mask_target",
    "QuantizeWeightsPass",
]
