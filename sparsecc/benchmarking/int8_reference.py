"""The dense int8 model a CPU user tries first: ONNX Runtime's ``quantize_dynamic`` of the dense ONNX build.

Sparse builds are timed against it beside fp32 dense, so a verdict says
whether sparsity beat the best dense alternative, not only fp32. The settings
are ONNX Runtime's one-call defaults with per-channel int8 weights (signed,
symmetric), the same as the per-layer int8 reference of the torch-sparse
kernel choice (backends/torch_sparse/dense_reference.py). `bench` quantizes
once per bundle, into a temporary folder that lives as long as the process
(its worker processes read it there): a bundle is never written to after
compile (its files are hashed).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

from sparsecc.bundle.reader import DENSE, Bundle, Variant

__all__ = ["CPU_BACKENDS", "INT8_DENSE", "int8_dense_copy", "int8_dense_variant", "quantize_dense_onnx"]

INT8_DENSE = "onnx-int8-dense"
CPU_BACKENDS = ("onnx", "onnx-custom-ops", "torch", "torch-sparse", "executorch")  # the backends timed against it


def quantize_dense_onnx(src: Path, dst: Path) -> Path:
    """``onnxruntime.quantization.quantize_dynamic`` of ``src`` (int8 per-channel weights) into ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        # the quantizer advises pre-processing (through the root logger); the exported graph is already clean
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)
    return dst


def int8_dense_copy(bundle: Bundle) -> Path | None:
    """The int8 copy of the bundle's dense ONNX build, in a temporary folder removed at exit; None
    without a dense ONNX build or without onnxruntime's quantizer."""
    dense = bundle.variant("onnx", DENSE)
    if dense is None or not dense.path.is_file():
        return None
    folder = Path(tempfile.mkdtemp(prefix="sparsecc-int8-"))
    atexit.register(shutil.rmtree, folder, True)
    try:
        return quantize_dense_onnx(dense.path, folder / dense.path.name)
    except ImportError:
        return None


def int8_dense_variant(bundle: Bundle, path: Path) -> Variant:
    """The int8 copy at ``path`` as a variant: the dense build's record (its inputs), the copy its only file."""
    dense = bundle.variant("onnx", DENSE)
    record = dense.artifact if dense is not None and dense.artifact else {}
    artifact = {**record, "files": {"model": path.name}}
    return Variant(INT8_DENSE, "onnx", path, artifact, path.parent)
