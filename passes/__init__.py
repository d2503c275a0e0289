"""Graph passes over `torch.export.ExportedProgram`s, one pass per file."""

from .compute_masks import ComputeMasksPass
from .fold_masks import FoldMasksPass
from .insert_masks import InsertMasksPass, mask_target
from .rewrite_sparse_kernels import RewriteSparseKernelsPass
from .verify_sparsity import SparsityVerificationError, VerifySparsityPass

__all__ = [
    "ComputeMasksPass",
    "InsertMasksPass",
    "FoldMasksPass",
    "VerifySparsityPass",
    "RewriteSparseKernelsPass",
    "SparsityVerificationError",
    "mask_target",
]
