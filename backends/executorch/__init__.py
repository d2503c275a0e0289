"""ExecuTorch backend: ``.pte`` files with XNNPACK delegation, run by the ExecuTorch runtime.

Importing this package registers the backend as ``"executorch"``;
executorch and zstandard are imported only when used. XNNPACK in ExecuTorch
has no sparse kernels, so sparsity here saves size (see the zstd copy), not
time; `ExecuTorchBackend.check` says so per layer. The ``executorch-custom-ops``
target runs sparse layers on sparsecc's own kernels (``libsparsecc_executorch.so``)
where they measure faster (`custom_ops`).
"""

from sparsecc.backends.base import register_backend

from .backend import COMPRESSED_FILE, MODEL_FILE, ExecuTorchBackend, ExecuTorchCustomOpsBackend
from .runtime import CustomOpError, ThreadCountError

__all__ = ["ExecuTorchBackend", "ExecuTorchCustomOpsBackend", "ThreadCountError", "CustomOpError", "MODEL_FILE",
           "COMPRESSED_FILE"]

register_backend("executorch", ExecuTorchBackend)
register_backend("executorch-custom-ops", ExecuTorchCustomOpsBackend)
