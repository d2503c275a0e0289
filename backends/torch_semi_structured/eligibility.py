"""Can a linear weight run on PyTorch's 2:4 semi-structured kernels? Each rule, with its reason.

``torch.sparse.to_sparse_semi_structured`` compresses a 2-D CUDA weight into
cuSPARSELt's layout (``SparseSemiStructuredTensorCUSPARSELT``, the default)
or CUTLASS's (``SparseSemiStructuredTensorCUTLASS``, chosen with
``SparseSemiStructuredTensor._FORCE_CUTLASS = True``). It needs:

- a CUDA GPU of compute capability 8.0 or newer (Ampere, Ada, Hopper and
  later have sparse tensor cores); cuSPARSELt must be in the torch build
  (``torch.backends.cusparselt.is_available()``) or CUTLASS is used;
- for CUTLASS, compute capability 8.x: torch's CUTLASS 2:4 kernels are built
  for Ampere/Ada only (on an H200 with torch 2.11 the first product fails
  with "Supported only on GPUs with compute capability 8.x"), so Hopper
  and newer need cuSPARSELt;
- dtype float16, bfloat16 or int8 (CUTLASS would take float32 too, but as
  1:2 sparsity, not 2:4; this backend keeps float32 layers dense);
- shape ``[rows, cols]`` with each dim at least, and a multiple of, the
  backend's minimum for the dtype. The minimums are read from the installed
  torch (each class's ``_DTYPE_SHAPE_CONSTRAINTS``): for example 32x64 for
  fp16 with CUTLASS and 16x16 with cuSPARSELt (torch 2.13);
- the weight 2:4 along its rows (``in_features``): at most 2 nonzeros in each
  group of 4, which is what the kernels compress.

`check_linear_weight` answers from a description of the weight and the
device, so the rules are testable on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Eligibility", "WeightInfo", "DeviceInfo", "check_linear_weight", "shape_constraints",
           "device_info", "is_2_4", "BACKENDS", "DTYPES", "MIN_CAPABILITY"]

BACKENDS = ("cusparselt", "cutlass")
DTYPES = (torch.float16, torch.bfloat16, torch.int8)
MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class WeightInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype
    is_2_4: bool


@dataclass(frozen=True)
class DeviceInfo:
    """``capability`` is None when the weight is not on a CUDA device."""

    capability: tuple[int, int] | None
    name: str = ""
    cusparselt: bool = False


@dataclass(frozen=True)
class Eligibility:
    eligible: bool
    reason: str
    backend: str

    def to_dict(self) -> dict[str, Any]:
        return {"eligible": self.eligible, "reason": self.reason, "backend": self.backend}


def shape_constraints(backend: str) -> dict[torch.dtype, tuple[int, int]]:
    """dtype -> (min rows, min cols) of the sparse operand, from the installed torch."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    cls = SparseSemiStructuredTensorCUTLASS if backend == "cutlass" else SparseSemiStructuredTensorCUSPARSELT
    return {dt: (c.sparse_min_rows, c.sparse_min_cols) for dt, c in cls._DTYPE_SHAPE_CONSTRAINTS.items()}


def device_info(device: torch.device | str | None = None) -> DeviceInfo:
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" or not torch.cuda.is_available():
        return DeviceInfo(None, str(device))
    cusparselt = bool(getattr(torch.backends, "cusparselt", None) and torch.backends.cusparselt.is_available())
    return DeviceInfo(tuple(torch.cuda.get_device_capability(device)), torch.cuda.get_device_name(device), cusparselt)


def is_2_4(weight: torch.Tensor) -> bool:
    """At most 2 nonzeros in every 4 consecutive entries of each row."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    groups = (weight.detach() != 0).reshape(weight.shape[0], -1, 4).sum(-1)
    return bool((groups <= 2).all())


def check_linear_weight(w: WeightInfo, dev: DeviceInfo, backend: str = "cusparselt") -> Eligibility:
    """Whether a linear weight ``[out, in]`` can be swapped for a semi-structured tensor, and why not."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if dev.capability is None:
        return Eligibility(False, f"needs a CUDA device (weight is on {dev.name or 'cpu'})", backend)
    if tuple(dev.capability) < MIN_CAPABILITY:
        major, minor = dev.capability
        return Eligibility(False, f"{dev.name or 'GPU'} has compute capability {major}.{minor}; 2:4 sparse tensor "
                                  f"cores need {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ampere+)", backend)
    used = backend
    if backend == "cusparselt" and not dev.cusparselt:
        used = "cutlass"  # torch's own fallback when cuSPARSELt is not in the build
    if used == "cutlass" and dev.capability[0] != 8:
        major, minor = dev.capability
        why = "cuSPARSELt is not in this torch build and " if used != backend else ""
        return Eligibility(False, f"{why}torch's CUTLASS 2:4 kernels run on compute capability 8.x only; "
                                  f"{dev.name or 'this GPU'} is {major}.{minor} (use cuSPARSELt)", used)
    if w.dtype == torch.float32:
        return Eligibility(False, "float32: the kernels' 2:4 path is for float16, bfloat16 and int8 "
                                  "(cast the model with .half() or .to(torch.bfloat16))", used)
    if w.dtype not in DTYPES:
        return Eligibility(False, f"dtype {str(w.dtype).removeprefix('torch.')} has no 2:4 kernels "
                                  "(float16, bfloat16, int8)", used)
    if len(w.shape) != 2:
        return Eligibility(False, f"weight has {len(w.shape)} dims; semi-structured tensors are 2-D", used)
    limits = shape_constraints(used)
    if w.dtype not in limits:
        return Eligibility(False, f"{used} has no {str(w.dtype).removeprefix('torch.')} kernels in this torch", used)
    min_rows, min_cols = limits[w.dtype]
    rows, cols = w.shape
    if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
        return Eligibility(False, f"shape [out={rows}, in={cols}]: {used} needs each of out and in to be at least "
                                  f"and a multiple of ({min_rows}, {min_cols}) for {str(w.dtype).removeprefix('torch.')}", used)
    if not w.is_2_4:
        return Eligibility(False, "weight is not 2:4 along in_features (prune it with a 2:4 recipe first)", used)
    note = " (cuSPARSELt not in this torch build: CUTLASS)" if used != backend else ""
    return Eligibility(True, f"2:4, {str(w.dtype).removeprefix('torch.')} [{rows}, {cols}] on {used}{note}", used)
