"""Re-check each weight's sparsity pattern inside the ONNX file.

The weight is read from the initializer that provenance recorded, in the ONNX
layout. N:M is checked along the reduction axis as stored (and TensorRT
eligibility with `check_nm`); unstructured needs a zero fraction of at least
``target - 1/numel``; block and channel count all-zero tiles or rows in the
PyTorch layout, recovered by undoing the recorded transpose.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from sparsecc.core.analyze import as_matrix
from sparsecc.backends.base import PatternCheck
from sparsecc.core.ir import MaskSpec

from .custom_ops import decompress_np
from .graph_index import GraphIndex
from .verify_nm import _zero_point, check_nm, nm_violation, zero_mask

if TYPE_CHECKING:
    import onnx

__all__ = ["check_patterns"]


def _units(torch_layout: np.ndarray, spec: MaskSpec, prov: dict[str, Any]) -> tuple[int, int, str] | str:
    """(all-zero units, units, unit name) for block/channel, or why the pattern does not fit."""
    view = as_matrix(torch.from_numpy(torch_layout != 0), prov["output_axis"], prov["reduction_axis"])
    mat = view.reshape(view.shape[0], -1)
    rows, cols = mat.shape
    if spec.pattern.kind == "channel":
        return int((~mat.any(1)).sum()), rows, "channels"
    r, c = spec.pattern.block  # type: ignore[misc]
    if rows % r or cols % c:
        return f"block {r}x{c} does not divide the weight viewed as [{rows}, {cols}]"
    tiles = mat.reshape(rows // r, r, cols // c, c).any(3).any(1)
    return int((~tiles).sum()), tiles.numel(), f"{r}x{c} blocks"


def _check_one(
    spec: MaskSpec, prov: dict[str, Any] | None, index: GraphIndex, eligible_by_init: dict[str, list[bool]]
) -> PatternCheck:
    pattern = str(spec.pattern)
    if prov is None or prov.get("initializer") is None:
        why = prov.get("reason", "") if prov else "not a prunable weight of the lowered program"
        return PatternCheck(spec.fqn, pattern, "", "", False, 0.0, f"not found in the ONNX model: {why}")
    name = prov["initializer"]
    location = f"initializer '{name}'" + (" (sparse)" if index.is_sparse(name) else "")
    op = prov.get("custom_op")
    if op is not None:  # replaced by a sparsecc custom op: the [out, in] weight rebuilt from its compressed form
        dense = decompress_np(index.array(op["crow_indices"]), index.array(op["col_indices"]),
                              index.array(op["values"]), op["shape"])
        values = dense.reshape(op.get("torch_shape", op["shape"])).transpose(prov["perm"])
        location = f"{op.get('op', 'SparseMatMul')} node '{op['node']}' ({op['format']}, initializer '{op['values']}')"
    else:
        values = index.array(name)
    dq = next((n for n, i in index.consumers.get(name, []) if n.op_type == "DequantizeLinear" and i == 0), None)
    if dq is not None:  # int8 integers: a weight is zero where it equals the zero point
        zero = _zero_point(index, dq, values.shape)
        if isinstance(zero, str):
            return PatternCheck(spec.fqn, pattern, location, prov.get("layout", ""), False, 0.0, zero)
        location += f" ({values.dtype} integers, read through DequantizeLinear '{dq.name}')"
        values = (~zero_mask(values, zero)).astype(np.int8)
    achieved = float((values == 0).mean()) if values.size else 0.0
    result = dict(fqn=spec.fqn, pattern=pattern, location=location, layout=prov["layout"], achieved=achieved)
    kind = spec.pattern.kind
    if kind == "nm":
        why = nm_violation(values, prov["onnx_reduction_axis"], spec.pattern.n, spec.pattern.m)  # type: ignore[arg-type]
        flags = eligible_by_init.get(name, [])
        return PatternCheck(**result, ok=why is None, reason=why or "", eligible=bool(flags) and all(flags))
    if kind == "unstructured":
        need = spec.target - 1.0 / max(values.size, 1)
        ok = achieved >= need
        why = "" if ok else f"{achieved:.4f} zeros, expected at least {spec.target:.4f}"
        return PatternCheck(**result, ok=ok, reason=why)
    torch_layout = values.transpose(np.argsort(prov["perm"]))
    units = _units(torch_layout, spec, prov)
    if isinstance(units, str):
        return PatternCheck(**result, ok=False, reason=units)
    zero, total, unit = units
    ok = zero / max(total, 1) >= spec.target - 1.0 / max(total, 1)
    why = "" if ok else f"{zero} of {total} {unit} are all zero, expected at least {math.ceil(spec.target * total - 1)}"
    return PatternCheck(**result, ok=ok, reason=why)


def check_patterns(
    model: "onnx.ModelProto", provenance: dict[str, dict[str, Any]], specs: Sequence[MaskSpec]
) -> list[PatternCheck]:
    """One `PatternCheck` per spec, read from ``model`` through ``provenance``."""
    index = GraphIndex(model)
    eligible_by_init: dict[str, list[bool]] = {}
    if any(s.pattern.kind == "nm" for s in specs):
        for layer in check_nm(model, 2, 4):
            if layer.initializer is not None:
                eligible_by_init.setdefault(layer.initializer, []).append(layer.eligible)
    return [_check_one(s, provenance.get(s.fqn), index, eligible_by_init) for s in specs]
