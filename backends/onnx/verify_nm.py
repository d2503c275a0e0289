"""N:M sparsity as TensorRT would see it, checked on an ONNX graph.

For every ``Conv``, ``MatMul`` and ``Gemm`` node the weight input is followed
back through ``Transpose``, ``Cast``, ``Identity``, ``QuantizeLinear`` and
``DequantizeLinear`` to the constant that holds it, and the N:M pattern is
checked on the axis TensorRT groups along, mapped through every transpose:

- ``Conv`` weight ``[Cout, Cin/g, kh, kw]``: axis 1 (input channels);
- ``MatMul`` constant ``B [.., K, N]``: axis -2; constant ``A [.., M, K]``: axis -1;
- ``Gemm`` ``B``: axis 1 when ``transB=1`` (``[N, K]``), else axis 0; ``A``
  likewise with ``transA``.

Every such node is reported, eligible or not, with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _deps
from .graph_index import GraphIndex, attribute

if TYPE_CHECKING:
    import onnx

__all__ = ["LayerEligibility", "WeightSource", "check_nm", "trace_weight", "nm_violation", "zero_mask"]

# Ops a weight may pass through on its way to the layer; the axis maps 1:1
# (except Transpose, handled separately).
_PASS_THROUGH = ("Cast", "Identity", "QuantizeLinear", "DequantizeLinear")
_LAYER_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class WeightSource:
    """Where a layer's weight input comes from.

    ``axis`` is the reduction axis on the constant itself; ``path`` lists the
    ops passed through, from the layer back to the constant. ``zero`` is the
    stored value that means zero: 0, or the zero point (broadcastable to the
    constant) when a ``DequantizeLinear`` reads the constant directly.
    """

    constant: str
    axis: int
    path: tuple[str, ...]
    zero: Any = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class LayerEligibility:
    """One Conv/MatMul/Gemm node: is its weight N:M sparse on the axis TensorRT reads?"""

    node: str
    op: str
    eligible: bool
    reason: str
    weight_input: int | None = None
    initializer: str | None = None
    axis: int | None = None
    shape: tuple[int, ...] = ()
    path: tuple[str, ...] = ()
    sparsity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"], d["path"] = list(self.shape), list(self.path)
        return d


def trace_weight(index: GraphIndex, tensor: str, axis: int) -> WeightSource | str:
    """Follow ``tensor`` back to a constant, mapping ``axis``; a reason string when it cannot."""
    path: list[str] = []
    zero: Any = 0
    name = tensor
    while not index.is_constant(name):
        node = index.producer.get(name)
        if node is None:
            where = "a graph input" if name in index.graph_inputs else "not produced by any node"
            return f"weight '{name}' is {where}, not a constant"
        src = node.input[0] if node.input else ""
        if node.op_type == "Transpose":
            rank = index.rank(src)
            perm = attribute(node, "perm") or (list(reversed(range(rank))) if rank else None)
            if perm is None:
                return f"rank of '{src}' before Transpose '{node.name}' is unknown"
            # Output axis a of a Transpose is input axis perm[a].
            axis = int(perm[axis])
        elif node.op_type not in _PASS_THROUGH:
            return f"weight '{tensor}' is computed by {node.op_type} node '{node.name}', not a constant"
        if node.op_type == "DequantizeLinear" and index.is_constant(src):
            # Stored integers dequantize to zero where they equal the zero point.
            zero = _zero_point(index, node, index.shape(src))
            if isinstance(zero, str):
                return zero
        path.append(node.op_type)
        name = src
    return WeightSource(name, axis, tuple(path), zero)


def _zero_point(index: GraphIndex, node: "onnx.NodeProto", shape: tuple[int, ...]) -> Any:
    """The DequantizeLinear zero point, broadcastable to ``shape``; a reason string if unknown."""
    if len(node.input) < 3 or not node.input[2]:
        return 0
    if not index.is_constant(node.input[2]):
        return f"zero point of DequantizeLinear '{node.name}' is computed, not a constant"
    zp = index.array(node.input[2])
    if zp.size == 1:
        return zp.reshape(())
    axis = int(attribute(node, "axis", 1)) % len(shape)
    block = int(attribute(node, "block_size", 0) or 0)
    if block:  # blocked quantization: one zero point per `block` entries along `axis`
        return np.repeat(zp, block, axis=axis).take(range(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = zp.size
    return zp.reshape(view)


def zero_mask(values: np.ndarray, zero: Any = 0) -> np.ndarray:
    """Boolean array: True where the entry is (or dequantizes to) zero."""
    return values == np.asarray(zero).astype(values.dtype)


def nm_violation(values: np.ndarray, axis: int, n: int, m: int, zero: Any = 0) -> str | None:
    """Why ``values`` is not N:M along ``axis`` (first broken group), or None when it is."""
    k = values.shape[axis]
    if k % m:
        return f"K={k} not a multiple of {m}"
    nonzero = np.moveaxis(~zero_mask(values, zero), axis, -1)
    counts = nonzero.reshape(-1, k // m, m).sum(-1)
    bad = np.argwhere(counts > n)
    if not len(bad):
        return None
    row, g = (int(v) for v in bad[0])
    outer = np.unravel_index(row, nonzero.shape[:-1]) if nonzero.ndim > 1 else ()
    start = [int(i) for i in outer]
    start.insert(axis % values.ndim, g * m)
    return (
        f"pattern broken at group {row * (k // m) + g} ({int(counts[row, g])} nonzeros in the {m} "
        f"entries from index {start} along axis {axis}; {len(bad)} of {counts.size} groups break {n}:{m})"
    )


def _weight_inputs(node: "onnx.NodeProto", index: GraphIndex) -> list[tuple[int, int]]:
    """(input index, reduction axis) candidates for a layer's weight, most likely first."""
    if node.op_type == "Conv":
        return [(1, 1)]
    if node.op_type == "Gemm":
        trans_a, trans_b = attribute(node, "transA", 0), attribute(node, "transB", 0)
        return [(1, 1 if trans_b else 0), (0, 0 if trans_a else 1)]
    # MatMul: B is [.., K, N] (K is axis -2, or 0 for a vector); A is [.., M, K].
    rank_b = index.rank(node.input[1]) or 2
    rank_a = index.rank(node.input[0]) or 2
    return [(1, max(rank_b - 2, 0)), (0, rank_a - 1)]


_TRT_DTYPES = ("FLOAT", "FLOAT16", "BFLOAT16", "INT8", "FLOAT8E4M3FN")


def _check_layer(node: "onnx.NodeProto", index: GraphIndex, n: int, m: int) -> LayerEligibility:
    onnx = _deps.onnx()
    base = dict(node=node.name, op=node.op_type)
    reasons: list[str] = []
    for inp, axis in _weight_inputs(node, index):
        if inp >= len(node.input) or not node.input[inp]:
            continue
        src = trace_weight(index, node.input[inp], axis)
        if isinstance(src, str):
            reasons.append(src)
            continue
        values = index.array(src.constant)
        shape = tuple(values.shape)
        found = dict(base, weight_input=inp, initializer=src.constant, axis=src.axis, shape=shape, path=src.path)
        found["sparsity"] = float(zero_mask(values, src.zero).mean()) if values.size else 0.0
        dtype = onnx.TensorProto.DataType.Name(index.elem_type(src.constant))
        if dtype not in _TRT_DTYPES:
            return LayerEligibility(eligible=False, reason=f"dtype {dtype} has no sparse kernels", **found)
        if src.axis >= values.ndim:
            return LayerEligibility(eligible=False, reason=f"axis {src.axis} out of range for {shape}", **found)
        why = nm_violation(values, src.axis, n, m, src.zero)
        if why is None:
            return LayerEligibility(eligible=True, reason=f"{n}:{m} along axis {src.axis} (K={shape[src.axis]})", **found)
        if not why.startswith("K="):
            other = [
                a for a in range(values.ndim)
                if a != src.axis and shape[a] > 1 and nm_violation(values, a, n, m, src.zero) is None
            ]
            if other:
                why = (
                    f"wrong axis: {n}:{m} holds along axis {other[0]} of {list(shape)}, "
                    f"but TensorRT reads axis {src.axis}"
                )
        return LayerEligibility(eligible=False, reason=why, **found)
    if node.op_type != "Conv" and all(r.endswith("not a constant") for r in reasons):
        reasons = ["no constant operand: both inputs are computed at run time"]
    return LayerEligibility(eligible=False, reason=reasons[0] if reasons else "no weight input", **base)


def check_nm(model: "onnx.ModelProto", n: int = 2, m: int = 4) -> list[LayerEligibility]:
    """Every Conv, MatMul and Gemm node of ``model``, with whether its weight is N:M on TensorRT's axis."""
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    index = GraphIndex(model)
    return [_check_layer(node, index, n, m) for node in index.nodes if node.op_type in _LAYER_OPS]
