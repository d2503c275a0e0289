"""Test harness for passes: golden graphs and numerical parity.

A golden test gives a `Before` module, a pass, and an `Expected` module:
`Before` is exported, the pass runs, `Expected` is exported, and the two
programs must have the same structure (`assert_same_structure`): the same ops
in the same order, with the same arguments (constants by value, nodes by
position, inputs by kind: user input, parameter, buffer, lifted constant), the
same wiring, and parameters, buffers and lifted constants of the same shapes
and dtypes. Names do not count, so ``Expected`` is written as plain PyTorch
(a mask the pass lifts as a constant is a plain tensor attribute there).
``Expected`` may be ``Before`` itself (the pass must not fire) or an exception
class (the pass must raise).
"""

from __future__ import annotations

from typing import Any, Callable

import difflib

import torch
import torch.fx
from torch.export import ExportedProgram

from sparsecc.core.ir import SparsityPattern
from sparsecc.core.pass_infra import PassBase
from sparsecc.plan.masks import compute_mask

__all__ = [
    "normalized_ops",
    "canonical_graph",
    "assert_same_structure",
    "export_module",
    "check_golden",
    "assert_close_tree",
    "prune_",
]


def normalized_ops(program: ExportedProgram) -> list[str]:
    """The program's ops in graph order, as ``aten.linear.default``-style names."""
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


def _tensor_type(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
    return type(t).__name__


def _arg(a: Any, index: dict[torch.fx.Node, str]) -> str:
    """One argument, canonically: nodes by position, constants by value."""
    if isinstance(a, torch.fx.Node):
        return index[a]
    if isinstance(a, (list, tuple)):
        inner = ", ".join(_arg(x, index) for x in a)
        return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
    if isinstance(a, dict):
        return "{" + ", ".join(f"{k!r}: {_arg(v, index)}" for k, v in a.items()) + "}"
    if isinstance(a, torch.Tensor):
        return f"tensor {_tensor_type(a)}"
    return repr(a)  # numbers, bools, None, strings, dtypes, devices, memory formats


def _placeholder(program: ExportedProgram, node: torch.fx.Node) -> str:
    """A placeholder by kind (names do not count), with the shape and dtype of the state it stands for."""
    specs = {getattr(s.arg, "name", None): s for s in program.graph_signature.input_specs}
    spec = specs.get(node.name)
    if spec is None or spec.kind.name == "USER_INPUT":
        return "user_input"
    kind = spec.kind.name.lower()
    if spec.target in program.state_dict:
        return f"{kind} {_tensor_type(program.state_dict[spec.target])}"
    if spec.target in program.constants:
        return f"{kind} {_tensor_type(program.constants[spec.target])}"
    return f"{kind} {_tensor_type(node.meta.get('val'))}"


def canonical_graph(program: ExportedProgram) -> list[str]:
    """The program as lines ``%i = op(args, key=value)`` in graph order, free of names.

    Two programs that compute the same thing the same way have equal lines
    whatever their nodes, parameters and constants are called.
    """
    index: dict[torch.fx.Node, str] = {}
    lines = []
    outputs = [s.kind.name.lower() for s in program.graph_signature.output_specs]
    for i, node in enumerate(program.graph.nodes):
        index[node] = f"%{i}"
        if node.op == "placeholder":
            lines.append(f"%{i} = {_placeholder(program, node)}")
        elif node.op == "output":
            lines.append(f"return {_arg(node.args[0], index)} as {outputs}")
        else:
            args = [_arg(a, index) for a in node.args]
            args += [f"{k}={_arg(v, index)}" for k, v in sorted(node.kwargs.items())]
            target = node.target if node.op == "call_function" else f"{node.op}:{node.target}"
            lines.append(f"%{i} = {target}({', '.join(args)})")
    return lines


def assert_same_structure(got: ExportedProgram, expected: ExportedProgram, label: str = "graph") -> None:
    """Fail, showing the differing lines of both graphs, unless their `canonical_graph` lines are equal."""
    g, w = canonical_graph(got), canonical_graph(expected)
    if g != w:
        diff = "\n".join(difflib.unified_diff(w, g, "expected", "got", lineterm="", n=2))
        raise AssertionError(f"{label}: graphs differ (- expected, + got)\n{diff}")


def export_module(module: torch.nn.Module, args: tuple[Any, ...]) -> ExportedProgram:
    return torch.export.export(module.eval(), args, strict=False)


def check_golden(
    before: torch.nn.Module,
    make_pass: Callable[[ExportedProgram], PassBase] | PassBase,
    expected: torch.nn.Module | type[BaseException],
    args: tuple[Any, ...],
    *,
    prepare: Callable[[ExportedProgram], ExportedProgram] | None = None,
) -> ExportedProgram | None:
    """Run the golden check; return the transformed program (None when it raised).

    ``make_pass`` may be a pass or a function of the (prepared) program that
    builds one, for passes whose arguments depend on the program. ``prepare``
    runs on the exported ``before`` first (e.g. earlier pipeline stages).
    """
    program = export_module(before, args)
    if prepare is not None:
        program = prepare(program)
    pass_ = make_pass if isinstance(make_pass, PassBase) else make_pass(program)
    if isinstance(expected, type) and issubclass(expected, BaseException):
        try:
            pass_(program)
        except expected:
            return None
        raise AssertionError(f"{pass_.name} did not raise {expected.__name__}")
    result = pass_(program)
    assert_same_structure(result.program, export_module(expected, args), pass_.name)
    if expected is before and result.modified:
        raise AssertionError(f"{pass_.name}: reported modified=True but must not fire")
    return result.program


def assert_close_tree(got: Any, want: Any, *, rtol: float, atol: float) -> None:
    """`torch.testing.assert_close` over matching pytrees (ModelOutputs included)."""
    g, gs = torch.utils._pytree.tree_flatten(got)
    w, ws = torch.utils._pytree.tree_flatten(want)
    assert len(g) == len(w), f"{len(g)} outputs, expected {len(w)}"
    for i, (a, b) in enumerate(zip(g, w)):
        if isinstance(b, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"output {i}: {m}")


def prune_(
    weight: torch.Tensor,
    pattern: str,
    sparsity: float = 0.0,
    *,
    reduction_axis: int = 1,
    output_axis: int | None = None,
) -> torch.Tensor:
    """Zero ``weight`` in place by magnitude under ``pattern`` (``"2:4"``, ``"unstructured"``, ``"2x8"``).

    For tests that hand a backend an already-sparse model, as after mask
    folding. ``output_axis`` defaults to the other of axes 0 and 1.
    """
    if output_axis is None:
        output_axis = 1 if reduction_axis == 0 else 0
    with torch.no_grad():
        mask = compute_mask(weight.abs(), SparsityPattern.parse(pattern), sparsity, output_axis, reduction_axis)
        weight.mul_(mask)
    return weight
