"""Test harness for passes: golden graphs and numerical parity.

A golden test gives a `Before` module, a pass, and an `Expected` module:
`Before` is exported, the pass runs, `Expected` is exported, and the two
programs' normalized op lists must be equal. ``Expected`` may be ``Before``
itself (the pass must not fire) or an exception class (the pass must raise).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.export import ExportedProgram

from sparsecc.core.pass_infra import PassBase

__all__ = ["normalized_ops", "export_module", "check_golden", "assert_close_tree", "prune_"]


def normalized_ops(program: ExportedProgram) -> list[str]:
    """The program's ops in graph order, as ``aten.linear.default``-style names."""
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


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
    want = normalized_ops(export_module(expected, args))
    got = normalized_ops(result.program)
    if got != want:
        raise AssertionError(f"{pass_.name}: ops differ\n  got:      {got}\n  expected: {want}")
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
    from sparsecc.core.ir import SparsityPattern
    from sparsecc.plan.masks import compute_mask

    if output_axis is None:
        output_axis = 1 if reduction_axis == 0 else 0
    with torch.no_grad():
        mask = compute_mask(weight.abs(), SparsityPattern.parse(pattern), sparsity, output_axis, reduction_axis)
        weight.mul_(mask)
    return weight
