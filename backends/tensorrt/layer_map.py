"""From TensorRT engine layer names back to ONNX nodes, and from ONNX nodes to model layers.

TensorRT names a layer after the ONNX node it was parsed from and joins fused
layers' names: ``"node_Conv_3 + node_Relu_4"``, pointwise fusions
``"PWN(PWN(node_Add_9), node_Relu_10)"``, and regions handed to the Myelin
compiler ``"{ForeignNode[node_MatMul_58...node_Add_97]}"`` (every node from
the first to the last, in graph order). The inspector's ``Metadata`` field
lists the ONNX nodes exactly (`inspector.onnx_nodes_in_metadata`) and is
preferred; the name is parsed when only a build log is at hand.

ONNX nodes map to model layers through the ONNX backend's weight provenance:
each weight records the nodes that consume its initializer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = ["LayerNameMap", "nodes_in_layer_name", "is_myelin_region"]

_FOREIGN = re.compile(r"ForeignNode\[(.+?)\.\.\.(.+?)\]")
_SEPARATORS = re.compile(r"[\s+(),{}\[\]]+")


def is_myelin_region(name: str) -> bool:
    return "ForeignNode[" in name


def nodes_in_layer_name(name: str, order: Sequence[str]) -> list[str]:
    """The ONNX node names (from ``order``, the graph's node names in order) that ``name`` covers."""
    known = set(order)
    found: list[str] = []
    position = {n: i for i, n in enumerate(order)}
    for m in _FOREIGN.finditer(name):
        first, last = m.group(1).strip(), m.group(2).strip()
        if first in position and last in position:
            lo, hi = sorted((position[first], position[last]))
            found.extend(order[lo:hi + 1])
    rest = _FOREIGN.sub(" ", name)
    for part in rest.split(" + "):
        part = part.strip()
        if part in known:  # names may hold characters the tokenizer splits on
            found.append(part)
            continue
        found.extend(tok for tok in _SEPARATORS.split(part) if tok in known)
    return list(dict.fromkeys(found))


@dataclass
class LayerNameMap:
    """ONNX node order and node -> model layer, from an ONNX model and its provenance."""

    order: list[str]
    node_to_weight: dict[str, str]  # ONNX node -> weight FQN
    weight_to_layer: dict[str, str]  # weight FQN -> module path

    @classmethod
    def build(cls, node_names: Iterable[str], provenance: dict[str, dict[str, Any]]) -> "LayerNameMap":
        node_to_weight: dict[str, str] = {}
        weight_to_layer: dict[str, str] = {}
        for fqn, entry in provenance.items():
            weight_to_layer[fqn] = entry.get("layer", fqn.rsplit(".", 1)[0])
            for c in entry.get("consumers") or []:
                node_to_weight.setdefault(c["node"], fqn)
        return cls(list(node_names), node_to_weight, weight_to_layer)

    def nodes(self, trt_name: str, metadata_nodes: Sequence[str] = ()) -> list[str]:
        return list(metadata_nodes) if metadata_nodes else nodes_in_layer_name(trt_name, self.order)

    def weights(self, trt_name: str, metadata_nodes: Sequence[str] = ()) -> list[str]:
        """The model weights (FQNs) whose layers the TensorRT layer ``trt_name`` computes."""
        ws = [self.node_to_weight.get(n) for n in self.nodes(trt_name, metadata_nodes)]
        return list(dict.fromkeys(w for w in ws if w))
