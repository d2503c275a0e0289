"""The dense int8 model a CPU user tries first: ONNX Runtime's ``quantize_dynamic`` of the dense ONNX build.

Sparse builds are timed against it beside fp32 dense, so a verdict says
whether sparsity beat the best dense alternative, not only fp32. The sparse
ONNX build gets the same treatment (`int8_sparse_copy`): a structured model
(smaller dense layers) keeps its gain under int8, and "both in int8" is the
comparison a user quantizing anyway makes. The settings
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

from sparsecc.bundle.reader import DENSE, SPARSE, Bundle, Variant

__all__ = ["CPU_BACKENDS", "INT8_DENSE", "INT8_SPARSE", "int8_dense_copy", "int8_sparse_copy", "int8_dense_variant",
           "int8_sparse_variant", "quantize_dense_onnx"]

INT8_DENSE = "onnx-int8-dense"
INT8_SPARSE = "onnx-int8-sparse"
CPU_BACKENDS = ("onnx", "onnx-custom-ops", "torch", "torch-sparse", "executorch", "executorch-custom-ops")  # the backends timed against it


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


def _onnx_build(bundle: Bundle, which: str) -> Variant | None:
    """The bundle's plain ONNX build; for the dense model, the onnx-custom-ops target's serves as well (its
    dense layers have no sparse weight to swap: the same fp32 graph)."""
    build = bundle.variant("onnx", which)
    if build is None and which == DENSE:
        build = bundle.variant("onnx-custom-ops", which)
    return build


def _int8_copy(bundle: Bundle, which: str) -> Path | None:
    build = _onnx_build(bundle, which)
    if build is None or not build.path.is_file():
        return None
    folder = Path(tempfile.mkdtemp(prefix=f"sparsecc-int8-{which}-"))
    atexit.register(shutil.rmtree, folder, True)
    try:
        return quantize_dense_onnx(build.path, folder / build.path.name)
    except ImportError:
        return None


def int8_dense_copy(bundle: Bundle) -> Path | None:
    """The int8 copy of the bundle's dense ONNX build, in a temporary folder removed at exit; None
    without a dense ONNX build or without onnxruntime's quantizer."""
    return _int8_copy(bundle, DENSE)


def int8_sparse_copy(bundle: Bundle) -> Path | None:
    """The same int8 copy of the bundle's sparse ONNX build (zeros stay zeros: symmetric weights)."""
    return _int8_copy(bundle, SPARSE)


def _variant(bundle: Bundle, which: str, name: str, path: Path) -> Variant:
    build = _onnx_build(bundle, which)
    record = build.artifact if build is not None and build.artifact else {}
    return Variant(name, "onnx", path, {**record, "files": {"model": path.name}}, path.parent)


def int8_dense_variant(bundle: Bundle, path: Path) -> Variant:
    """The int8 copy at ``path`` as a variant: the dense build's record (its inputs), the copy its only file."""
    return _variant(bundle, DENSE, INT8_DENSE, path)


def int8_sparse_variant(bundle: Bundle, path: Path) -> Variant:
    """The sparse build's int8 copy at ``path`` as a variant."""
    return _variant(bundle, SPARSE, INT8_SPARSE, path)
