"""QDQ int8 weights in the ONNX file, for programs quantized by `sparsecc.passes.QuantizeWeightsPass`.

Each quantized weight's fp32 initializer ``W`` is replaced by the int8
integers ``W_int8`` (same ONNX layout), per-channel scales ``W_scale`` and an
int8 zero point of 0, read by one ``DequantizeLinear`` (``axis`` = the output
channel in the ONNX layout) whose output keeps the name ``W``: every consumer
is unchanged. This is the QDQ weight format ONNX Runtime's quantizer writes
and TensorRT's explicit int8 reads (with the 2:4 check tracing through the
DequantizeLinear, `verify_nm.trace_weight`).

``DequantizeLinear`` computes ``(q - 0) * scale`` in float32, the same product
the fake-quantized program holds, so the dequantized weight equals the
program's weight bit for bit; `apply_qdq` checks that before it rewrites.
Provenance then points at the int8 initializer: the pattern check reads the
stored integers (zero where they equal the zero point).

With static activations (``quantize: {activations: static}``) each layer's
activation input also gets a ``QuantizeLinear`` / ``DequantizeLinear`` pair
with the calibrated per-tensor scale and zero point 0: the full QDQ int8
layer TensorRT's explicit quantization and ONNX Runtime's QDQ fusion read.
Dynamic activations have no scale to write; they stay float (weight-only QDQ).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch.export import ExportedProgram

from sparsecc.core.program import state_tensor
from sparsecc.passes.quantize_weights import quant_info

from . import _deps
from .graph_index import GraphIndex

if TYPE_CHECKING:
    import onnx

__all__ = ["apply_qdq", "dequantize_reader"]


def dequantize_reader(index: GraphIndex, name: str) -> "onnx.NodeProto | None":
    """The ``DequantizeLinear`` reading constant ``name`` as its integers, if any."""
    for node, i in index.consumers.get(name, []):
        if node.op_type == "DequantizeLinear" and i == 0:
            return node
    return None


def _unique(index: GraphIndex, taken: set[str], base: str) -> str:
    name, i = base, 1
    while name in taken or index.is_constant(name) or name in index.producer:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _one(model: "onnx.ModelProto", index: GraphIndex, taken: set[str], name: str, entry: dict[str, Any],
         scale: np.ndarray) -> dict[str, Any] | str:
    """Rewrite one initializer as int8 + DequantizeLinear; the QDQ record, or why not."""
    onnx = _deps.onnx()
    nh, helper = onnx.numpy_helper, onnx.helper
    if index.is_sparse(name) or name not in {t.name for t in model.graph.initializer}:
        return "not a dense initializer"
    values = index.array(name, cache=False)
    if values.dtype != np.float32:
        return f"initializer dtype {values.dtype}, not float32"
    axis = list(entry["perm"]).index(entry["output_axis"])
    view = [1] * values.ndim
    view[axis] = -1
    s = scale.astype(np.float32).reshape(view)
    q = np.clip(np.rint(values / s), -127, 127)
    if not np.array_equal(q.astype(np.float32) * s, values):  # what DequantizeLinear computes
        return "initializer is not on the program's int8 grid (a folded normalization rescaled it?)"
    q8, sc, zp = (_unique(index, taken, f"{name}_{k}") for k in ("int8", "scale", "zero_point"))
    inits = model.graph.initializer
    keep = [t for t in inits if t.name != name]
    del inits[:]
    inits.extend(keep)
    inits.extend([nh.from_array(q.astype(np.int8), q8), nh.from_array(scale.astype(np.float32), sc),
                  nh.from_array(np.zeros(scale.shape, np.int8), zp)])
    node_name = _unique(index, taken, f"{name}_DequantizeLinear")
    node = helper.make_node("DequantizeLinear", [q8, sc, zp], [name], name=node_name, axis=axis)
    model.graph.node.insert(0, node)
    return {"dtype": "int8", "integers": q8, "scale": sc, "zero_point": zp, "axis": axis,
            "dequantize_node": node_name, "float_initializer": name}


def _quantize_activation(model: "onnx.ModelProto", taken: set[str], consumer: dict[str, Any], act_scale: float,
                         index: GraphIndex) -> str | None:
    """Put QuantizeLinear -> DequantizeLinear (per tensor) on the consumer's activation input; the Q node's name."""
    onnx = _deps.onnx()
    nodes = list(model.graph.node)
    pos = next((k for k, n in enumerate(nodes) if n.name == consumer["node"]), None)
    if pos is None or consumer["op"] not in ("MatMul", "Gemm", "Conv") or consumer["input"] not in (0, 1):
        return None
    node = nodes[pos]
    act = 0 if consumer["op"] == "Conv" else 1 - consumer["input"]
    x = node.input[act]
    base = x.replace("/", "_")
    sc, zp, xq, xd = (_unique(index, taken, f"{base}_{k}") for k in ("act_scale", "act_zero_point", "int8", "dq"))
    qn, dn = _unique(index, taken, f"{base}_QuantizeLinear"), _unique(index, taken, f"{base}_DequantizeLinear")
    nh, helper = onnx.numpy_helper, onnx.helper
    model.graph.initializer.extend([nh.from_array(np.array(act_scale, np.float32), sc),
                                    nh.from_array(np.array(0, np.int8), zp)])
    node.input[act] = xd
    model.graph.node.insert(pos, helper.make_node("DequantizeLinear", [xq, sc, zp], [xd], name=dn))
    model.graph.node.insert(pos, helper.make_node("QuantizeLinear", [x, sc, zp], [xq], name=qn))
    return qn


def apply_qdq(model: "onnx.ModelProto", program: ExportedProgram, provenance: dict[str, dict[str, Any]]
              ) -> dict[str, Any]:
    """Store every int8-quantized weight of ``program`` as QDQ in ``model`` (in place); update provenance.

    Returns ``{"weights": n, "skipped": {fqn: why}}``.
    """
    index = GraphIndex(model)
    taken: set[str] = set()
    done, skipped = 0, {}
    for fqn, entry in provenance.items():
        rec = quant_info(program, fqn)
        if rec is None:
            continue
        name = entry.get("initializer")
        if name is None:
            skipped[fqn] = "no initializer holds this weight"
            continue
        scale = state_tensor(program, rec["scale"]).detach().numpy()
        got = _one(model, index, taken, name, entry, scale)
        if isinstance(got, str):
            skipped[fqn] = got
            continue
        if rec.get("act_scale"):
            got["activation_qdq"] = [q for c in entry.get("consumers", [])
                                     if (q := _quantize_activation(model, taken, c, rec["act_scale"], index))]
        entry.update(initializer=got["integers"], quantized=got)
        done += 1
    return {"weights": done, "skipped": skipped}
