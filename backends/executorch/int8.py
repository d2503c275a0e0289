"""XNNPACK's dynamically quantized int8 linear for programs quantized by `QuantizeWeightsPass`.

For every weight whose ``quant`` record says ``int8`` with ``activations:
dynamic`` and that an ``aten.linear`` reads, the private copy of the program
is rewritten into the pattern XNNPACK's partitioner turns into its
``qd8-f32-qc8w`` fully connected op (what XNNPACKQuantizer's dynamic
per-channel config produces, but with the program's own integers and
scales instead of observed ones)::

    w_q  = <fqn>  (int8 constant, the program's grid: round(w / scale))
    w    = dequantize_per_channel(w_q, <fqn>_qscale, zeros, axis, -127, 127, int8)
    s, z = choose_qparams.tensor(x, -128, 127, eps, int8)
    x'   = dequantize_per_tensor(quantize_per_tensor(x, s, z, ...), s, z, ...)
    y    = linear(x', w, b)

XNNPACK quantizes ``x`` itself at run time, per row (token), asymmetric
int8; ``w_q * scale`` equals the fake-quantized program's weight bit for bit,
so the artifact differs from the program only by rounding the activations.
The int8 constant keeps the weight's FQN as its target, so the delegation
report and the weight index find it, and ``verify_pattern`` reads the int8
integers XNNPACK stores (a zero weight is a zero integer: zero point 0).

Static activations (one calibrated scale per layer) are refused: XNNPACK's
static int8 linear needs the whole layer in int8 (quantized outputs too).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, InputSpec, TensorArgument

from sparsecc.backends.base import LoweringError
from sparsecc.core.analyze import find_prunable_weights
from sparsecc.core.program import ProgramEditor
from sparsecc.passes.quantize_weights import int8_grid, quant_info
from sparsecc.verify.parity import INT8_ATOL, INT8_RTOL, int8_parity_tolerance  # shared with the ONNX target

__all__ = [
    "StaticActivationsError", "quantized_weights", "quantize_dynamic_linears", "int8_parity_tolerance",
    "INT8_RTOL", "INT8_ATOL",
]

_EPS = torch.finfo(torch.float32).eps
_LINEAR = torch.ops.aten.linear.default


class StaticActivationsError(LoweringError):
    """``quantize: {activations: static}`` cannot be lowered to ExecuTorch's XNNPACK int8 path."""


def quantized_weights(program: ExportedProgram) -> dict[str, dict[str, Any]]:
    """``{fqn: quant record}`` for every int8-quantized prunable weight of ``program``."""
    out = {}
    for w in find_prunable_weights(program).weights:
        rec = quant_info(program, w.fqn)
        if rec is not None and rec.get("dtype") == "int8":
            out[w.fqn] = rec
    return out


def refuse_static(records: dict[str, dict[str, Any]]) -> None:
    static = sorted(f for f, r in records.items() if r.get("activations") == "static")
    if static:
        raise StaticActivationsError(
            f"ExecuTorch: int8 weights with activations: static ({', '.join(static[:3])}"
            f"{' ...' if len(static) > 3 else ''}) are not supported: XNNPACK's static int8 linear needs "
            "int8 outputs and requantization between layers, which this program does not describe. "
            "Use quantize: {weights: int8, activations: dynamic} (XNNPACK qd8-f32-qc8w), or the onnx target"
        )


def _depth(program: ExportedProgram, layers: set[str]) -> int:
    """Most rewritten linear nodes on one path from an input to an output."""
    depth: dict[torch.fx.Node, int] = {}
    for n in program.graph.nodes:
        d = max((depth.get(a, 0) for a in n.all_input_nodes), default=0)
        depth[n] = d + (1 if n.name in layers else 0)
    return max(depth.values(), default=0)


def quantize_dynamic_linears(program: ExportedProgram, source: ExportedProgram) -> tuple[ExportedProgram, dict[str, Any]]:
    """Rewrite ``program`` (a private copy of ``source``) as described in the module docstring.

    The quant records are read from ``source``: the save/load round trip of the
    private copy drops sparsecc's node metadata.

    Returns the new program and ``{"layers": {fqn: record}, "skipped": {fqn: why},
    "depth": int}``.
    """
    records = quantized_weights(source)
    refuse_static(records)
    info: dict[str, Any] = {"layers": {}, "skipped": {}, "depth": 0}
    if not records:
        return program, info
    qd = torch.ops.quantized_decomposed
    ed = ProgramEditor(program)
    rewritten: set[str] = set()
    for fqn, rec in records.items():
        w_node = ed.node_for_target(fqn)
        users = list(w_node.users)
        linears = [u for u in users if u.target is _LINEAR and len(u.args) > 1 and u.args[1] is w_node]
        if not linears or len(linears) != len(users):
            info["skipped"][fqn] = "not read by aten.linear only (stays fp32)"
            continue
        if rec["axis"] != 0 or w_node.meta["val"].dim() != 2:
            info["skipped"][fqn] = f"per-channel axis {rec['axis']} is not the linear's output axis (stays fp32)"
            continue
        q, scale = int8_grid(source, fqn)
        if not torch.equal(q.float() * scale.reshape(-1, 1), ed.tensor(fqn).detach()):
            info["skipped"][fqn] = "weight is not on its int8 grid (stays fp32)"
            continue
        try:
            s_node = ed.node_for_target(rec["scale"])
        except KeyError:
            s_node = ed.add_constant(rec["scale"] + "_xnn", scale.float().contiguous(),
                                     name="c_" + (rec["scale"] + "_xnn").replace(".", "_"))
        tmp = fqn + "__int8"
        q_node = ed.add_constant(tmp, q.contiguous(), name="c_" + tmp.replace(".", "_"))
        zp_t = fqn + "_qzero"
        z_node = ed.add_constant(zp_t, torch.zeros(q.shape[0], dtype=torch.int64),
                                 name="c_" + zp_t.replace(".", "_"))
        first = min(linears, key=lambda n: list(ed.graph.nodes).index(n))
        with ed.graph.inserting_before(first):
            dq_args = (q_node, s_node, z_node, 0, -127, 127, torch.int8)
            dq = ed.graph.call_function(qd.dequantize_per_channel.default, dq_args)
            dq.meta["val"] = ed.fake_call(qd.dequantize_per_channel.default, *dq_args)
            dq.meta["nn_module_stack"] = first.meta.get("nn_module_stack", {})
        for lin in linears:
            x = lin.args[0]
            with ed.graph.inserting_before(lin):
                cq_args = (x, -128, 127, _EPS, torch.int8)
                cq = ed.graph.call_function(qd.choose_qparams.tensor, cq_args)
                cq.meta["val"] = ed.fake_call(qd.choose_qparams.tensor, *cq_args)
                s = ed.graph.call_function(operator.getitem, (cq, 0))
                z = ed.graph.call_function(operator.getitem, (cq, 1))
                s.meta["val"], z.meta["val"] = cq.meta["val"]
                qa = (x, s, z, -128, 127, torch.int8)
                xq = ed.graph.call_function(qd.quantize_per_tensor.tensor, qa)
                xq.meta["val"] = ed.fake_call(qd.quantize_per_tensor.tensor, *qa)
                da = (xq, s, z, -128, 127, torch.int8)
                xd = ed.graph.call_function(qd.dequantize_per_tensor.tensor, da)
                xd.meta["val"] = ed.fake_call(qd.dequantize_per_tensor.tensor, *da)
                for n in (cq, s, z, xq, xd):
                    n.meta["nn_module_stack"] = lin.meta.get("nn_module_stack", {})
            lin.args = (xd, dq, *lin.args[2:])
            rewritten.add(lin.name)
        ed.remove_input(w_node)
        # The int8 integers take the weight's FQN, so the report and index find them.
        ed.constants[fqn] = ed.constants.pop(tmp)
        ed._specs[q_node.name] = InputSpec(kind=InputKind.CONSTANT_TENSOR,
                                           arg=TensorArgument(name=q_node.name), target=fqn)
        info["layers"][fqn] = {"dtype": "int8", "axis": 0, "scale": rec["scale"], "activations": "dynamic",
                               "kernel": "XNNPACK qd8-f32-qc8w fully connected",
                               "linear_nodes": [n.name for n in linears]}
    new = ed.finish()
    info["depth"] = _depth(new, rewritten)
    return new, info
