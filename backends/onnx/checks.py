"""What the ONNX target does with each prunable layer's sparsity.

ONNX Runtime's CPU provider densifies sparse initializers at load and runs
every layer with its dense kernels, so every layer is `Support.DENSE`: zeros
shrink the file (with sparse initializers), not the run time. For N:M-shaped
layers the reason adds whether TensorRT could run them 2:4 sparse from this
ONNX file, judged by shape.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from sparsecc.core.analyze import PrunableWeight, find_prunable_weights
from sparsecc.backends.base import LayerCheck, Support
from sparsecc.core.ir import get_node_info
from sparsecc.core.program import state_tensor

from .verify_nm import nm_violation

__all__ = ["check_program", "DENSE_REASON", "trt_shape_eligibility"]

DENSE_REASON = "ONNX Runtime CPU runs zeros as dense: saves file size (sparse initializers), not time"
# TensorRT times sparse against dense kernels and tends to keep dense below this.
_TRT_SMALL_CHANNELS = 256


def trt_shape_eligibility(w: PrunableWeight) -> tuple[bool, str]:
    """Could TensorRT run this weight 2:4 sparse, judging by its shape alone?"""
    k = w.reduction_size
    if w.role == "conv" and w.groups > 1:
        return False, f"grouped conv (groups={w.groups}): TensorRT's 2:4 kernels are for dense convolutions"
    if k % 4:
        return False, f"K={k} not a multiple of 4"
    note = ""
    if min(k, w.out_size) < _TRT_SMALL_CHANNELS:
        note = f"; small layer (K={k}, out={w.out_size}): TensorRT will likely pick its dense kernel"
    return True, f"K={k} is a multiple of 4{note}"


def _is_nm(program: ExportedProgram, w: PrunableWeight) -> bool:
    """Is the layer meant to be, or already, N:M: by its mask spec, else by its values (2:4)?"""
    node = next((n for n in program.graph.nodes if n.name == w.node), None)
    info = get_node_info(node) if node is not None else None
    if info is not None and info.spec is not None:
        return info.spec.pattern.kind == "nm"
    try:
        values = state_tensor(program, w.fqn).detach().float().cpu().numpy()
    except KeyError:
        return False
    if w.reduction_size % 4 or not values.any():
        return False
    return nm_violation(values, w.reduction_axis, 2, 4) is None


def check_program(program: ExportedProgram) -> list[LayerCheck]:
    """One `LayerCheck` per prunable weight of ``program``."""
    checks = []
    for w in find_prunable_weights(program).weights:
        reason = DENSE_REASON
        if _is_nm(program, w):
            ok, why = trt_shape_eligibility(w)
            reason += f"; TensorRT 2:4: {'eligible' if ok else 'not eligible'} by shape ({why})"
        checks.append(LayerCheck(w.layer, w.fqn, Support.DENSE, reason))
    return checks
