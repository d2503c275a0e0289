"""torch-sparse backend: the PyTorch program with sparse kernels where they measured faster.

Importing this package registers the backend as ``"torch-sparse"``. Its
artifact is ``program.pt2`` (a `torch.export` program whose chosen layers call
``torch.ops.sparsecc.sparse_linear`` / ``sparse_conv1x1`` over compressed
weights) plus ``kernels.json`` (the per-layer choice and measurement). Load it
with `load_sparse_program`.
"""

from sparsecc.backends.base import register_backend

from .backend import KERNELS_FILE, MODEL_FILE, TorchSparseBackend, TorchSparseRunner, load_sparse_program

__all__ = ["TorchSparseBackend", "TorchSparseRunner", "load_sparse_program", "MODEL_FILE", "KERNELS_FILE"]

register_backend("torch-sparse", TorchSparseBackend)
