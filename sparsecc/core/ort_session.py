"""ONNX Runtime session options shared by the ONNX backend and `sparsecc bench`.

Torch-free on purpose: `sparsecc bench` runs ONNX bundles on machines with
only onnxruntime installed. Sessions use one inter-op thread and no
spin-waiting (``session.intra_op.allow_spinning = 0``): two spinning sessions
in one process steal each other's cores and skew every timing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["onnxruntime_module", "session_options"]


def onnxruntime_module() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError("ONNX Runtime is not installed: pip install 'sparsecc[onnx]'") from e
    return onnxruntime


def session_options(threads: int | None = None, profile_prefix: str | None = None) -> Any:
    """CPU session options: ``threads`` intra-op threads (None: ORT's default), optional profiling."""
    ort = onnxruntime_module()
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts
