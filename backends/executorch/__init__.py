"""ExecuTorch backend: ``.pte`` files with XNNPACK delegation, run by the ExecuTorch runtime.

Importing this package registers the backend as ``"executorch"``;
executorch and zstandard are imported only when used. XNNPACK in ExecuTorch
has no sparse kernels, so sparsity here saves size (see the zstd copy), not
time; `ExecuTorchBackend.check` says so per layer.
"""

from sparsecc.backends.base import register_backend

from .backend import COMPRESSED_FILE, MODEL_FILE, ExecuTorchBackend
from .runtime import ThreadCountError

__all__ = ["ExecuTorchBackend", "ThreadCountError", "MODEL_FILE", "COMPRESSED_FILE"]

register_backend("executorch", ExecuTorchBackend)
