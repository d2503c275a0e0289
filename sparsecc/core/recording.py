"""Recording intermediate values of a captured program as it runs.

`record_values` rewrites a ``torch.fx.GraphModule`` (what ``ExportedProgram.module()``
returns: a fresh copy of the graph each call, so the program itself is never
touched) so that every forward call hands chosen values to a Python callback,
in graph order, with their autograd history. The graph computes what it did:
the callback's result is not used. Distillation matches hidden states with it
(`sparsecc.recovery.hidden`); activation statistics read linear inputs with it
(`sparsecc.plan.activation_sparsity`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.fx

from sparsecc.errors import UsageError

__all__ = ["record_values", "linear_inputs"]

_aten = torch.ops.aten


def record_values(module: torch.nn.Module, nodes: Sequence[torch.fx.Node],
                  callback: Callable[[int, object], None]) -> None:
    """After each of ``nodes`` (of ``module.graph``), call ``callback(i, value)``; recompiles ``module``."""
    if not isinstance(module, torch.fx.GraphModule):
        raise UsageError(f"recording values needs a captured program's module, got {type(module).__name__}")
    graph = module.graph
    for i, node in enumerate(nodes):
        if node.graph is not graph:
            raise UsageError(f"node {node.name} is not in this module's graph")
        with graph.inserting_after(node):
            graph.call_function(callback, (i, node))
    module.recompile()


def _weight_name(node: object) -> str | None:
    """The parameter a linear's weight argument reads (through a mask multiply), or None."""
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        return str(node.target)
    if isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target == _aten.mul.Tensor:
        for arg in node.args:
            name = _weight_name(arg)
            if name is not None:
                return name
    return None


def linear_inputs(module: torch.fx.GraphModule) -> list[tuple[str, torch.fx.Node, torch.fx.Node]]:
    """``(weight name, linear node, input node)`` of every ``aten.linear`` whose weight is a parameter."""
    found = []
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target == _aten.linear.default:
            name = _weight_name(node.args[1])
            if name is not None and isinstance(node.args[0], torch.fx.Node):
                found.append((name, node, node.args[0]))
    return found
