"""Read-only index of an ONNX graph: producers, consumers and constant values.

Constants are dense initializers, sparse initializers (densified on read) and
``Constant`` nodes; arrays are decoded on first use and cached, so indexing a
large model costs nothing until a weight is actually looked at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from . import _deps

if TYPE_CHECKING:
    import onnx

__all__ = ["GraphIndex", "densify", "attribute"]


def densify(sparse: "onnx.SparseTensorProto") -> np.ndarray:
    """A dense array from a `SparseTensorProto` (linear or coordinate indices)."""
    nh = _deps.onnx().numpy_helper
    values = nh.to_array(sparse.values)
    indices = nh.to_array(sparse.indices).astype(np.int64, copy=False)
    dims = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
    if indices.size:
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dims)
        dense[flat] = values.reshape(-1)
    return dense.reshape(dims)


def attribute(node: "onnx.NodeProto", name: str, default: Any = None) -> Any:
    """The value of a node attribute, or ``default`` when it is not set."""
    helper = _deps.onnx().helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class GraphIndex:
    """Producers, consumers and constants of one (top-level) ONNX graph."""

    def __init__(self, model: "onnx.ModelProto"):
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.node_by_name = {n.name: n for n in self.nodes if n.name}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for i, inp in enumerate(node.input):
                if inp:
                    self.consumers.setdefault(inp, []).append((node, i))
        self._dense = {t.name: t for t in graph.initializer}
        self._sparse = {t.values.name: t for t in graph.sparse_initializer}
        self._const_nodes = {n.output[0]: n for n in self.nodes if n.op_type == "Constant" and n.output}
        self.graph_inputs = {v.name for v in graph.input} - set(self._dense) - set(self._sparse)
        self._cache: dict[str, np.ndarray] = {}
        self._ranks: dict[str, int] | None = None

    # -- constants -------------------------------------------------------------
    def is_constant(self, name: str) -> bool:
        return name in self._dense or name in self._sparse or name in self._const_nodes

    def is_sparse(self, name: str) -> bool:
        return name in self._sparse

    def initializer_names(self) -> Iterator[str]:
        """Names of the dense and sparse initializers, in file order."""
        yield from self._dense
        yield from self._sparse

    def elem_type(self, name: str) -> int:
        """The ONNX element type (``TensorProto.FLOAT`` ...) of a constant."""
        if name in self._dense:
            return self._dense[name].data_type
        if name in self._sparse:
            return self._sparse[name].values.data_type
        value = attribute(self._const_nodes[name], "value")
        return value.data_type if value is not None else _deps.onnx().TensorProto.FLOAT

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._dense:
            return tuple(int(d) for d in self._dense[name].dims)
        if name in self._sparse:
            return tuple(int(d) for d in self._sparse[name].dims)
        return tuple(self.array(name).shape)

    def rank(self, name: str) -> int | None:
        """The rank of a constant or of a value with a known shape, else None."""
        if self.is_constant(name):
            return len(self.shape(name))
        if self._ranks is None:
            g = self.model.graph
            self._ranks = {
                vi.name: len(vi.type.tensor_type.shape.dim)
                for vi in list(g.input) + list(g.value_info) + list(g.output)
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
            }
        return self._ranks.get(name)

    def array(self, name: str, cache: bool = True) -> np.ndarray:
        """The value of a constant as a numpy array; ``cache=False`` for one-off reads of big weights."""
        if name in self._cache:
            return self._cache[name]
        value = self._decode(name)
        if cache:
            self._cache[name] = value
        return value

    def _decode(self, name: str) -> np.ndarray:
        nh = _deps.onnx().numpy_helper
        if name in self._dense:
            return nh.to_array(self._dense[name])
        if name in self._sparse:
            return densify(self._sparse[name])
        node = self._const_nodes.get(name)
        if node is None:
            raise KeyError(f"{name!r} is not a constant of the graph")
        for a in node.attribute:
            if a.name == "value":
                return nh.to_array(a.t)
            if a.name == "sparse_value":
                return densify(a.sparse_tensor)
        return np.asarray(attribute(node, node.attribute[0].name))
