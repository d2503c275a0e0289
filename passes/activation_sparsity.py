"""ActivationSparsityPass: zero the small inputs of chosen linear layers (training-free activation sparsity).

Before each chosen ``linear(x, W, b)`` the pass inserts ``where(|x| > t, x, 0)``
with the layer's threshold ``t`` (from `sparsecc.plan.activation_sparsity`), in
plain ATen ops, so every backend runs it and the quality can be measured
anywhere. A threshold of 0 inserts nothing: exact zeros (after a ReLU) are
already zero, and a kernel that skips them computes the same values
(`sparsecc.kernels.act_sparse_linear`). The torch-sparse backend turns the
pattern into that kernel; other backends run it as written (no speed-up).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch.export import ExportedProgram

from sparsecc.core.ir import set_node_info
from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor

__all__ = ["ActivationSparsityPass", "thresholded_input"]

aten = torch.ops.aten


class ActivationSparsityPass(PassBase):
    """Insert the magnitude threshold of ``thresholds[weight name]`` before each of those linear layers."""

    def __init__(self, thresholds: Mapping[str, float]):
        for fqn, t in thresholds.items():
            if not (isinstance(t, (int, float)) and t >= 0 and t == t):
                raise ValueError(f"{fqn}: an activation threshold must be a number >= 0, got {t!r}")
        self.thresholds = {k: float(v) for k, v in thresholds.items()}

    def requires(self, program: ExportedProgram) -> None:
        found = {fqn for fqn, _ in _linears(ProgramEditor(program))}
        missing = sorted(set(self.thresholds) - found)
        if missing:
            raise ValueError(f"not the weight of a linear layer of this program: {', '.join(missing)}")

    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        modified = False
        for fqn, linear in _linears(ed):
            t = self.thresholds.get(fqn)
            if t is None or t == 0.0 or thresholded_input(linear) is not None:
                continue
            with self.at(linear):
                x = linear.args[0]
                with ed.graph.inserting_before(linear):
                    mag = ed.graph.call_function(aten.abs.default, (x,))
                    keep = ed.graph.call_function(aten.gt.Scalar, (mag, t))
                    kept = ed.graph.call_function(aten.where.ScalarOther, (keep, x, 0.0))
                mag.meta["val"] = ed.fake_call(aten.abs.default, x)
                keep.meta["val"] = ed.fake_call(aten.gt.Scalar, mag, t)
                kept.meta["val"] = ed.fake_call(aten.where.ScalarOther, keep, x, 0.0)
                for n in (mag, keep, kept):
                    if "nn_module_stack" in linear.meta:
                        n.meta["nn_module_stack"] = dict(linear.meta["nn_module_stack"])
                set_node_info(kept, extra={"activation_threshold_of": fqn})
                linear.replace_input_with(x, kept)
                modified = True
        return PassResult(ed.finish(), modified)

    def ensures(self, program: ExportedProgram) -> None:
        for fqn, linear in _linears(ProgramEditor(program)):
            t = self.thresholds.get(fqn)
            if t and thresholded_input(linear) is None:
                raise AssertionError(f"{fqn}: no activation threshold before its linear layer")


def _linears(ed: ProgramEditor) -> list[tuple[str, torch.fx.Node]]:
    """(weight name, linear node) for each aten.linear reading a parameter (through a mask multiply)."""
    found = []
    for node in ed.graph.nodes:
        if node.op != "call_function" or node.target != aten.linear.default:
            continue
        w = node.args[1]
        if isinstance(w, torch.fx.Node) and w.op == "call_function" and w.target == aten.mul.Tensor:
            w = w.args[0]
        spec = ed.spec_of(w) if isinstance(w, torch.fx.Node) and w.op == "placeholder" else None
        if spec is not None and spec.target is not None:
            found.append((spec.target, node))
    return found


def thresholded_input(linear: torch.fx.Node) -> tuple[torch.fx.Node, float] | None:
    """``(x, t)`` when the linear's input is ``where(abs(x) > t, x, 0)`` (this pass's pattern), else None."""
    kept = linear.args[0]
    if not (isinstance(kept, torch.fx.Node) and kept.target == aten.where.ScalarOther and kept.args[2] == 0.0):
        return None
    keep, x = kept.args[0], kept.args[1]
    if not (isinstance(keep, torch.fx.Node) and keep.target == aten.gt.Scalar):
        return None
    mag, t = keep.args
    if not (isinstance(mag, torch.fx.Node) and mag.target == aten.abs.default and mag.args[0] is x):
        return None
    return x, float(t)
