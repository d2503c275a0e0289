"""Executing a program's graph node by node on many batches, feeding calibration taps on the way."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from sparsecc.plan.calibration_data import Batch, CalibrationError
from sparsecc.plan.taps import Tap, activation_matrix

__all__ = ["block_key", "GraphRunner", "stacked", "stop_index"]

# Per consumer node, the (tap, statistics) pairs to feed; statistics have ``add(matrix)``
# (`sparsecc.plan.activation_stats.Stats`).
Taps = Mapping[torch.fx.Node, list[tuple[Tap, Any]]]


def block_key(node: torch.fx.Node) -> str | None:
    """The numbered block a node belongs to (``model.layers.3``), or its top module, or None."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = str(list(stack.values())[-1][0])
    if not path:
        return None
    parts = path.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


class GraphRunner:
    """Executes a program's graph on many batches, segment by segment, freeing dead values."""

    def __init__(self, program: ExportedProgram):
        self.program = program
        self.gm = program.graph_module
        self.nodes = [n for n in self.gm.graph.nodes]
        index = {n: i for i, n in enumerate(self.nodes)}
        self.last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in self.nodes}
        self.dead_after: dict[int, list[torch.fx.Node]] = {}
        for n, i in self.last_use.items():
            if n.op != "placeholder":
                self.dead_after.setdefault(i, []).append(n)
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        self.param_node = {
            s.target: s.arg.name for s in program.graph_signature.input_specs
            if s.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
        }

    def initial_env(self, batch: Batch, overrides: Mapping[str, torch.Tensor]) -> dict[torch.fx.Node, Any]:
        args, kwargs = batch
        try:
            flat = self.program._graph_module_flat_inputs(args, kwargs)
        except Exception as e:
            raise CalibrationError(f"a calibration batch does not fit the program's inputs: {e}") from e
        env = dict(zip(self.placeholders, flat))
        by_name = {n.name: n for n in self.placeholders}
        for fqn, t in overrides.items():
            env[by_name[self.param_node[fqn]]] = t
        return env

    def feed(self, env: dict[torch.fx.Node, Any], i: int,
             taps: Taps) -> None:
        """Feed the taps of node ``i`` from ``env`` without running the node."""
        node = self.nodes[i]
        if node in taps:
            args = torch.fx.node.map_arg(node.args, lambda n: env[n])
            for tap, stats in taps[node]:
                stats.add(activation_matrix(args[tap.operand], tap))

    def run(self, env: dict[torch.fx.Node, Any], start: int, stop: int,
            taps: Taps | None = None) -> Any:
        """Run nodes ``[start, stop)`` in ``env`` (updated in place); return the output if reached."""
        result = None
        for i in range(start, stop):
            node = self.nodes[i]
            if node.op == "placeholder":
                continue
            if node.op == "get_attr":
                value: Any = self.gm
                for part in str(node.target).split("."):
                    value = getattr(value, part)
                env[node] = value
            elif node.op == "call_function":
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
                if taps and node in taps:
                    for tap, stats in taps[node]:
                        stats.add(activation_matrix(args[tap.operand], tap))
                env[node] = node.target(*args, **kwargs)
            elif node.op == "output":
                result = torch.fx.node.map_arg(node.args[0], lambda n: env[n])
            else:
                raise CalibrationError(f"cannot execute node {node.name} ({node.op})")
            for dead in self.dead_after.get(i, ()):
                env.pop(dead, None)
        return result


def stacked(program: ExportedProgram, batches: list[Batch], most: int = 8) -> list[Batch]:
    """Consecutive batches of one shape joined along axis 0, up to ``most`` at a time.

    Statistics are sums over rows, so joining changes nothing but speed: a few
    large matrix products instead of many small ones. Batches that differ in
    shape, or a program whose batch axis is static, are left as they are.
    """
    out: list[Batch] = []
    group: list[Batch] = []

    def signature(b: Batch) -> tuple:
        leaves, spec = pytree.tree_flatten(b)
        return (spec, tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else x for x in leaves))

    def flush() -> None:
        if len(group) > 1:
            leaves = [pytree.tree_flatten(b)[0] for b in group]
            spec = pytree.tree_flatten(group[0])[1]
            joined = [torch.cat(col) if isinstance(col[0], torch.Tensor) and col[0].dim() else col[0]
                      for col in zip(*leaves)]
            candidate = pytree.tree_unflatten(joined, spec)
            try:
                program._graph_module_flat_inputs(*candidate)
                out.append(candidate)
                group.clear()
                return
            except Exception:
                pass  # the program does not take a larger batch: keep them apart
        out.extend(group)
        group.clear()

    for b in batches:
        if group and (len(group) == most or signature(b) != signature(group[0])):
            flush()
        group.append(b)
    flush()
    return out


def stop_index(runner: GraphRunner, taps: Mapping[torch.fx.Node, Any]) -> int:
    """Nothing after the last tapped node is needed."""
    index = {n: i for i, n in enumerate(runner.nodes)}
    return max(index[n] for n in taps) + 1 if taps else 0
