"""An FP16 copy of an ONNX model: weights and compute in float16, I/O as asked.

TensorRT 11 builds every network strongly typed: it runs each layer in the
type the ONNX graph gives it and has no FP16 builder flag any more. To get
FP16 (and FP16 2:4 sparse tensor-core kernels) the graph itself must be FP16.

The conversion is a rewrite of types, never of structure:

- float32 initializers and ``Constant`` / ``ConstantOfShape`` values become
  float16 (names kept, so weight provenance still points at the right
  initializer); values beyond float16's range are clamped and counted;
- ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)``, so computed tensors stay FP16;
- float32 graph inputs and outputs either become float16 (``io="float16"``) or
  stay float32 with a ``Cast`` at the boundary (``io="float32"``, the default:
  callers feed and read what the PyTorch model takes and returns);
- every intermediate type annotation follows.

Rounding to float16 can only turn small weights into zeros, never zeros into
nonzeros, so an N:M pattern survives; callers re-verify it anyway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _deps

if TYPE_CHECKING:
    import onnx

__all__ = ["Fp16Conversion", "to_fp16", "FP16_MAX", "IO_DTYPES"]

FP16_MAX = float(np.finfo(np.float16).max)
IO_DTYPES = ("float32", "float16")


@dataclass
class Fp16Conversion:
    """What `to_fp16` changed."""

    initializers: int = 0
    constants: int = 0
    casts: int = 0
    io_casts: list[str] = field(default_factory=list)
    clamped_values: int = 0
    clamped_tensors: list[str] = field(default_factory=list)
    flushed_to_zero: int = 0
    io: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _half(array: np.ndarray, name: str, stats: Fp16Conversion) -> np.ndarray:
    over = np.abs(array) > FP16_MAX
    if over.any():
        stats.clamped_values += int(over.sum())
        stats.clamped_tensors.append(name)
        array = np.clip(array, -FP16_MAX, FP16_MAX)
    half = array.astype(np.float16)
    stats.flushed_to_zero += int(((half == 0) & (array != 0)).sum())
    return half


def _convert_tensor(tensor: "onnx.TensorProto", stats: Fp16Conversion) -> bool:
    onnx = _deps.onnx()
    if tensor.data_type != onnx.TensorProto.FLOAT:
        return False
    array = onnx.numpy_helper.to_array(tensor)
    tensor.CopyFrom(onnx.numpy_helper.from_array(_half(array, tensor.name, stats), tensor.name))
    return True


def _retype(value_info: "onnx.ValueInfoProto") -> None:
    onnx = _deps.onnx()
    tt = value_info.type.tensor_type
    if tt.elem_type == onnx.TensorProto.FLOAT:
        tt.elem_type = onnx.TensorProto.FLOAT16


def _rename_input(graph: "onnx.GraphProto", old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def to_fp16(model: "onnx.ModelProto", io: str = "float32") -> Fp16Conversion:
    """Convert ``model`` (in place) to FP16 weights and compute; see the module doc."""
    onnx = _deps.onnx()
    if io not in IO_DTYPES:
        raise ValueError(f"io must be one of {', '.join(IO_DTYPES)}, got {io!r}")
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    stats = Fp16Conversion(io=io)
    graph = model.graph
    if model.functions or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                              for n in graph.node for a in n.attribute):
        # Subgraphs (If/Loop/Scan) and local functions would need the same rewrite inside.
        raise NotImplementedError("FP16 conversion of models with subgraphs or local functions is not supported")

    for init in graph.initializer:
        stats.initializers += _convert_tensor(init, stats)
    for sparse in graph.sparse_initializer:
        stats.initializers += _convert_tensor(sparse.values, stats)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                attr.i = FLOAT16
                stats.casts += 1
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                stats.constants += _convert_tensor(attr.t, stats)
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                raise NotImplementedError(
                    f"Constant node '{node.name}' stores a float32 {attr.name} attribute; "
                    "FP16 conversion needs it as a tensor (run onnx's constant folding first)")
    for vi in graph.value_info:
        _retype(vi)

    new_nodes = []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type != FLOAT:
            continue
        if io == "float16":
            _retype(inp)
            continue
        inner = f"{inp.name}__fp16"
        _rename_input(graph, inp.name, inner)
        new_nodes.append(onnx.helper.make_node("Cast", [inp.name], [inner], name=f"{inp.name}__cast_fp16", to=FLOAT16))
        stats.io_casts.append(inp.name)
    tail = []
    produced = {name for node in graph.node for name in node.output}
    for out in graph.output:
        if out.type.tensor_type.elem_type != FLOAT:
            continue
        if out.name not in produced:
            raise NotImplementedError(
                f"output '{out.name}' is a graph input or an initializer, not computed; FP16 conversion "
                "needs every float output to come from a node")
        if io == "float16":
            _retype(out)
            continue
        # The producer now writes an FP16 tensor; a Cast at the end restores the float32 output name.
        inner = f"{out.name}__fp16"
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == out.name:
                    node.output[i] = inner
        _rename_input(graph, out.name, inner)
        tail.append(onnx.helper.make_node("Cast", [inner], [out.name], name=f"{out.name}__cast_fp32", to=FLOAT))
        stats.io_casts.append(out.name)
    if new_nodes or tail:
        nodes = new_nodes + list(graph.node) + tail
        del graph.node[:]
        graph.node.extend(nodes)
    return stats
