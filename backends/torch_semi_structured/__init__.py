"""PyTorch 2:4 semi-structured kernels on the GPU (cuSPARSELt by default, CUTLASS as an option).

Not a lowering target: the swap happens on the GPU at load time, on the
model or the sparse program's module (`sparsecc.load_program(...).module()`).
"""

from .eligibility import DeviceInfo, Eligibility, WeightInfo, check_linear_weight, device_info, is_2_4, shape_constraints
from .measure import measure_speedup
from .swap import SwapDecision, SwapReport, force_cutlass, swap_semi_structured

__all__ = [
    "DeviceInfo",
    "Eligibility",
    "WeightInfo",
    "check_linear_weight",
    "device_info",
    "is_2_4",
    "measure_speedup",
    "shape_constraints",
    "SwapDecision",
    "SwapReport",
    "force_cutlass",
    "swap_semi_structured",
]
