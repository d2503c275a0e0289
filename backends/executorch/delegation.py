"""Which nodes XNNPACK took, which run on ExecuTorch's portable kernels, and why.

The report is built from the lowered edge program: every call inside an
XNNPACK delegate's original subgraph counts as delegated; every other op
call (not ``getitem``, not a shape computation) falls back to a portable
kernel, with the partitioner's own reason when it logged one. Prunable
layers are then mapped by their weight's FQN to the delegate that owns it,
or to the portable nodes that read it.

``report`` layout (JSON-serialisable)::

    {"summary": {"delegates": 2, "xnnpack_nodes": 9, "portable_nodes": 2},
     "by_op": {"aten.linear.default": {"xnnpack": 3, "portable": 0}, ...},
     "nodes": [{"node", "op", "where": "xnnpack" | "portable", "delegate", "layer", "reason"}],
     "layers": [{"fqn", "layer", "role", "where": "xnnpack" | "portable" | "missing",
                 "delegate", "nodes", "reason"}]}
"""

from __future__ import annotations

import operator
from typing import Any, Iterator, Sequence

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from sparsecc.core.analyze import PrunableWeight

from . import _deps

__all__ = ["delegation_report", "lowered_modules", "op_name", "XNNPACK_ID"]

XNNPACK_ID = "XnnpackBackend"
_STATE = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
# Ops that only move a weight around before its consumer reads it.
_PASS_THROUGH = ("permute_copy", "t_copy", "view_copy", "_to_copy", "expand_copy", "unsqueeze_copy")


def op_name(node: torch.fx.Node) -> str:
    """``aten.linear.default`` for edge and ATen ops alike."""
    name = getattr(node.target, "__name__", None) or str(node.target)
    name = str(name)
    if not name.startswith("aten.") and hasattr(node.target, "_schema"):
        schema = node.target._schema  # type: ignore[union-attr]
        name = f"{schema.name.replace('::', '.')}.{schema.overload_name or 'default'}"
    return name


def _is_compute(node: torch.fx.Node) -> bool:
    """A kernel call, not a getitem or a size computation."""
    if node.op != "call_function" or node.target is operator.getitem:
        return False
    if node.target is torch.ops.higher_order.executorch_call_delegate:
        return False
    val = node.meta.get("val")
    if isinstance(val, (int, torch.SymInt, float, bool)):
        return False
    return getattr(node.target, "__module__", "") not in ("_operator", "operator")


def _layer(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(list(stack.values())[-1][0])
    return ""


def lowered_modules(edge_program: ExportedProgram) -> Iterator[tuple[str, Any]]:
    """``(attribute name, LoweredBackendModule)`` in call order."""
    gm = edge_program.graph_module
    for node in edge_program.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.higher_order.executorch_call_delegate:
            get_attr = node.args[0]
            yield get_attr.target, getattr(gm, get_attr.target)


def _supported(partitioner: Any, node: torch.fx.Node) -> bool:
    fmt = _deps.config_partitioner().format_target_name
    try:
        return fmt(node.target.__name__) in partitioner.target_partitioner_configs
    except AttributeError:
        return False


def _operand_kinds(node: torch.fx.Node) -> str:
    """What a node reads, for XNNPACK's terse "invalid dtype": dtypes, or symbolic sizes."""
    kinds = []
    for a in node.all_input_nodes:
        val = a.meta.get("val")
        if isinstance(val, torch.Tensor):
            kinds.append(str(val.dtype).removeprefix("torch."))
        elif isinstance(val, (int, torch.SymInt)):
            kinds.append(f"a symbolic size ({a.name})")
    return ", ".join(dict.fromkeys(kinds))


def _why(node: torch.fx.Node, rejections: dict[str, str], partitioner: Any) -> str:
    if node.name in rejections:
        reason = rejections[node.name]
        if reason == "invalid dtype":
            # XNNPACK says this both for non-float tensors and for shape operands.
            reason += f" (operands: {_operand_kinds(node)})"
        return reason
    if not _supported(partitioner, node):
        return f"XNNPACK has no rule for {op_name(node)}"
    return "XNNPACK's rule for this op did not take it (no reason logged: dtype, shape or partition boundary)"


def _consumers(placeholder: torch.fx.Node) -> list[torch.fx.Node]:
    """The nodes that compute with a weight, looking through layout-only copies."""
    out, todo = [], list(placeholder.users)
    while todo:
        n = todo.pop()
        parts = op_name(n).split(".")
        if len(parts) > 1 and parts[1] in _PASS_THROUGH:
            todo.extend(n.users)
        else:
            out.append(n)
    return out


def _weight_users(program: ExportedProgram, fqn: str) -> list[torch.fx.Node] | None:
    names = {s.arg.name for s in program.graph_signature.input_specs if s.kind in _STATE and s.target == fqn}
    if not names:
        return None
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in names)
    return _consumers(node)


def delegation_report(
    edge_program: ExportedProgram,
    rejections: dict[str, str],
    weights: Sequence[PrunableWeight],
) -> dict[str, Any]:
    """The delegation report described in the module docstring."""
    partitioner = _deps.xnnpack_partitioner().XnnpackPartitioner()
    nodes: list[dict[str, Any]] = []
    delegates = list(lowered_modules(edge_program))
    for name, lm in delegates:
        # Only the XNNPACK partitioner runs, so every delegate is XNNPACK's.
        for n in lm.original_module.graph.nodes:
            if _is_compute(n):
                nodes.append({"node": n.name, "op": op_name(n), "where": "xnnpack", "delegate": name,
                              "layer": _layer(n), "reason": None})
    for n in edge_program.graph.nodes:
        if _is_compute(n):
            nodes.append({"node": n.name, "op": op_name(n), "where": "portable", "delegate": None,
                          "layer": _layer(n), "reason": _why(n, rejections, partitioner)})

    by_op: dict[str, dict[str, int]] = {}
    for e in nodes:
        counts = by_op.setdefault(e["op"], {"xnnpack": 0, "portable": 0})
        counts[e["where"]] += 1
    portable = {e["node"]: e for e in nodes if e["where"] == "portable"}

    layers = []
    for w in weights:
        entry: dict[str, Any] = {"fqn": w.fqn, "layer": w.layer, "role": w.role}
        owner = next(((name, users) for name, lm in delegates
                      if (users := _weight_users(lm.original_module, w.fqn)) is not None), None)
        top = _weight_users(edge_program, w.fqn)
        if owner is not None and not top:
            entry.update(where="xnnpack", delegate=owner[0], nodes=[n.name for n in owner[1]], reason=None)
        elif top:
            reasons = [portable[n.name]["reason"] for n in top if n.name in portable]
            entry.update(where="portable", delegate=None, nodes=[n.name for n in top],
                         reason="; ".join(dict.fromkeys(r for r in reasons if r)) or None)
        else:
            entry.update(where="missing", delegate=None, nodes=[],
                         reason="the weight is not an input of the lowered program (folded into a constant?)")
        layers.append(entry)

    summary = {
        "delegates": len(delegates),
        "xnnpack_nodes": sum(e["where"] == "xnnpack" for e in nodes),
        "portable_nodes": sum(e["where"] == "portable" for e in nodes),
    }
    return {"summary": summary, "by_op": dict(sorted(by_op.items())), "nodes": nodes, "layers": layers}

