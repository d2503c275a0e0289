"""Map ONNX Runtime profile node names back to the model's layers.

ORT fuses and renames nodes before it runs them (``Conv`` + ``Relu`` becomes
``relu_nchwc``: the fused node takes the name of the last fused op's output
tensor; ``Gemm`` + ``Relu`` becomes ``fused node_linear``). A profiled name is therefore resolved on the exported graph: as a
node name, else as the tensor a node produced; from there producers are
followed up through ops that fusion folds into a conv or matmul (activation,
normalization, add) until a node that consumes a prunable weight is found
(the bundle's ONNX ``provenance``; a layer replaced by a sparsecc custom op
is found by that op's node). Other nodes are attributed to their
module scope (the exporter's ``pkg.torch.onnx.name_scopes`` metadata).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

__all__ = ["LayerMap", "strip_profile_name"]

_FOLDED_OPS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Mul", "Add",
               "BatchNormalization", "Identity", "Cast", "Transpose", "Reshape", "Gelu", "FastGelu", "Erf", "Div"}
_SUFFIXES = ("_kernel_time", "_fence_before", "_fence_after")
_MAX_DEPTH = 4


def strip_profile_name(name: str) -> str:
    """``relu_1_nchwc_kernel_time`` -> ``relu_1``: the graph name behind a profile event."""
    for s in _SUFFIXES:
        if name.endswith(s):
            name = name[: -len(s)]
    # Gemm + activation fusion prefixes the first node's name with "fused "
    return re.sub(r"_nchwc$", "", name.removeprefix("fused "))


class LayerMap:
    """Resolves profiled node names of one ``.onnx`` to layers, using its provenance."""

    def __init__(self, model_path: Path, provenance: dict[str, Any]):
        try:
            import onnx
        except ImportError as e:
            raise ImportError("per-layer ONNX profiles need the onnx package: pip install 'sparsecc[onnx]'") from e
        model = onnx.load(str(model_path), load_external_data=False)
        self.nodes = {n.name: n for n in model.graph.node}
        self.producer = {out: n for n in model.graph.node for out in n.output}
        self.consumer_layer: dict[str, str] = {}
        for rec in provenance.values():
            for c in rec.get("consumers", []):
                self.consumer_layer[c["node"]] = rec["layer"]
            for swapped in ("custom_op", "ort_int8"):  # the layer's node replaced by a sparsecc custom op
                if rec.get(swapped):                  # or by ONNX Runtime's own int8 layer
                    self.consumer_layer[rec[swapped]["node"]] = rec["layer"]
        self._cache: dict[str, tuple[str, bool]] = {}

    def _scope(self, node: Any) -> str:
        for p in node.metadata_props:
            if p.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = [s for s in ast.literal_eval(p.value) if s]
                except (ValueError, SyntaxError):
                    break
                # the last entry names the op, the one before it the module
                return scopes[-2] if len(scopes) >= 2 else (scopes[0] if scopes else node.name)
        return node.name

    def _walk(self, node: Any, depth: int = 0) -> str | None:
        if node.name in self.consumer_layer:
            return self.consumer_layer[node.name]
        if depth >= _MAX_DEPTH or node.op_type not in _FOLDED_OPS:
            return None
        for inp in node.input:
            prod = self.producer.get(inp)
            if prod is not None:
                found = self._walk(prod, depth + 1)
                if found:
                    return found
        return None

    def resolve(self, profile_name: str) -> tuple[str, bool]:
        """``(layer, is_prunable_layer)``; unknown names come back as they are."""
        if profile_name in self._cache:
            return self._cache[profile_name]
        name = strip_profile_name(profile_name)
        node = self.nodes.get(name) or self.producer.get(name)
        if node is None:
            out = (name, False)
        else:
            layer = self._walk(node)
            out = (layer, True) if layer else (self._scope(node), False)
        self._cache[profile_name] = out
        return out
