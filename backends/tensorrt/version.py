"""Which TensorRT major version is installed, and what that means for precision."""

from __future__ import annotations

from types import ModuleType

__all__ = ["tensorrt_major", "needs_fp16_graph", "SUPPORTED_MAJORS"]

SUPPORTED_MAJORS = (10, 11)


def tensorrt_major(trt: ModuleType | str) -> int:
    """The major version of the ``tensorrt`` module (or of a version string); refuses unsupported ones."""
    version = trt if isinstance(trt, str) else str(getattr(trt, "__version__", ""))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise RuntimeError(f"cannot read the TensorRT version from {version!r}") from None
    if major not in SUPPORTED_MAJORS:
        raise RuntimeError(
            f"TensorRT {version} is not supported: sparsecc builds engines with TensorRT "
            f"{' or '.join(map(str, SUPPORTED_MAJORS))}")
    return major


def needs_fp16_graph(major: int) -> bool:
    """TensorRT 11 removed the precision builder flags: FP16 must be in the ONNX graph itself.

    TensorRT 10 takes ``BuilderFlag.FP16`` and may run any layer in FP16; it
    builds the FP16 graph too, so both versions build the same file.
    """
    return major >= 11
