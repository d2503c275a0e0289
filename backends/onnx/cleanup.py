"""Clean an exported ONNX graph with onnx-graphsurgeon.

Folds constants, drops ``Identity`` nodes and redundant ``Cast`` chains,
removes dead nodes and sorts the graph topologically. graphsurgeon drops
node metadata, so the exporter's module scopes are copied back by node name:
they say which PyTorch module each ONNX node came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _deps

if TYPE_CHECKING:
    import onnx

__all__ = ["CleanupStats", "clean_graph", "KEPT_NODE_METADATA"]

# Node metadata worth keeping in the shipped file (stack traces are not: they
# leak local paths and can be larger than the weights of a small model).
KEPT_NODE_METADATA = ("namespace", "pkg.torch.onnx.name_scopes")

# Casts that lose nothing: a round trip through them is the identity.
_WIDENING = {
    "float16": {"float32", "float64"},
    "bfloat16": {"float32", "float64"},
    "float32": {"float64"},
    "int8": {"int16", "int32", "int64"},
    "int16": {"int32", "int64"},
    "int32": {"int64"},
    "uint8": {"uint16", "uint32", "uint64", "int16", "int32", "int64"},
    "uint16": {"uint32", "uint64", "int32", "int64"},
    "uint32": {"uint64", "int64"},
}


@dataclass
class CleanupStats:
    nodes_before: int = 0
    nodes_after: int = 0
    identities_removed: int = 0
    casts_removed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _dtype_name(dtype: Any) -> str | None:
    """A numpy-style dtype name for a graphsurgeon dtype or ONNX enum, None if unknown."""
    if dtype is None:
        return None
    onnx = _deps.onnx()
    if isinstance(dtype, (int, np.integer)):
        return onnx.helper.tensor_dtype_to_np_dtype(int(dtype)).name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return None


def _replace(tensors: Any, old: Any, new: Any) -> None:
    # graphsurgeon's synchronized lists take item assignment, not slices.
    for i, t in enumerate(list(tensors)):
        if t is old:
            tensors[i] = new


def _bypass(graph: Any, node: Any) -> bool:
    """Remove a single-input, single-output no-op node, rewiring its users; False if it must stay."""
    inp, out = node.inputs[0], node.outputs[0]
    if out in graph.outputs:
        # The output keeps its name: make the producer of `inp` produce `out`
        # instead, unless `inp` is itself an input, a constant or an output.
        if len(inp.inputs) != 1 or inp in graph.outputs or inp in graph.inputs:
            return False
        producer = inp.inputs[0]
        for user in list(inp.outputs):
            if user is not node:
                _replace(user.inputs, inp, out)
        node.outputs.clear()
        _replace(producer.outputs, inp, out)
        node.inputs.clear()
        return True
    for user in list(out.outputs):
        _replace(user.inputs, out, inp)
    node.inputs.clear()
    node.outputs.clear()
    return True


def _drop_identities(graph: Any) -> int:
    return sum(_bypass(graph, n) for n in list(graph.nodes) if n.op == "Identity" and len(n.inputs) == 1)


def _drop_redundant_casts(graph: Any) -> int:
    """Remove casts to the type a tensor already has, and lossless round trips (f32->f64->f32)."""
    removed = 0
    for node in list(graph.nodes):
        if node.op != "Cast" or not node.inputs or not node.outputs:
            continue
        target = _dtype_name(node.attrs.get("to"))
        src = node.inputs[0]
        if target is not None and _dtype_name(src.dtype) == target:
            removed += _bypass(graph, node)
            continue
        inner = src.inputs[0] if len(src.inputs) == 1 else None
        if inner is None or inner.op != "Cast" or len(src.outputs) != 1 or src in graph.outputs:
            continue
        origin = _dtype_name(inner.inputs[0].dtype)
        middle = _dtype_name(inner.attrs.get("to"))
        if origin is None or middle not in _WIDENING.get(origin, ()):
            continue
        # x -> wider -> target equals x -> target: drop the inner cast.
        node.inputs[0] = inner.inputs[0]
        inner.inputs.clear()
        inner.outputs.clear()
        removed += 1
        if origin == target:
            removed += _bypass(graph, node)
    return removed


def clean_graph(model: "onnx.ModelProto") -> tuple["onnx.ModelProto", CleanupStats]:
    """A cleaned copy of ``model`` and what the cleanup did."""
    gs = _deps.graphsurgeon()
    _deps.onnxruntime()  # fold_constants evaluates subgraphs with ONNX Runtime
    stats = CleanupStats(nodes_before=len(model.graph.node))
    metadata = {
        n.name: [(p.key, p.value) for p in n.metadata_props if p.key in KEPT_NODE_METADATA]
        for n in model.graph.node
        if n.name
    }
    # Never fold into a constant larger than the largest weight: that would
    # bake an Expand or Tile of a small tensor into the file.
    largest = max((int(np.prod(t.dims)) * 8 for t in model.graph.initializer), default=0)
    with gs.logger.G_LOGGER.suppress(gs.logger.G_LOGGER.ERROR):
        graph = gs.import_onnx(model)
        graph.toposort()
        graph.fold_constants(size_threshold=max(largest, 1 << 20), partitioning="basic")
        graph.cleanup()
        stats.identities_removed = _drop_identities(graph)
        stats.casts_removed = _drop_redundant_casts(graph)
        graph.cleanup().toposort()
        out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    out.metadata_props.extend(model.metadata_props)
    for node in out.graph.node:
        for key, value in metadata.get(node.name, ()):
            out_prop = node.metadata_props.add()
            out_prop.key, out_prop.value = key, value
    stats.nodes_after = len(out.graph.node)
    return out, stats
