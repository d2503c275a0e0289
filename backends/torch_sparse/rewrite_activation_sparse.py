"""RewriteActivationSparsePass: run linear layers with sparse inputs through the activation-sparse kernel.

Two patterns become ``torch.ops.sparsecc.act_sparse_linear(x, W^T, b, t)``, the
kernel that reads only the weight rows of the inputs with ``|x| > t``
(`sparsecc.kernels.act_sparse_linear`; it pays at decoding sizes, 1-8 tokens,
where a linear layer is bound by reading its weight):

- ``linear(where(|x| > t, x, 0), W, b)``, the thresholds that
  `sparsecc.passes.ActivationSparsityPass` inserts;
- with ``exact_relu``, ``linear(relu(x), W, b)``: ReLU's zeros, skipped with
  threshold 0, which changes no bit of the kernel's result.

The weight is stored once, transposed (``<fqn>_act_t``), and the dense
parameter leaves the program. A weight with a mask or a sparse-kernel choice is
left alone (weight sparsity's kernels take it).
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram

import sparsecc.kernels as kernels
from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor
from sparsecc.passes.activation_sparsity import thresholded_input

__all__ = ["RewriteActivationSparsePass", "act_weight_target"]

aten = torch.ops.aten


def act_weight_target(fqn: str) -> str:
    """The constant holding the transposed weight of activation-sparse layer ``fqn``."""
    return f"{fqn}_act_t"


class RewriteActivationSparsePass(PassBase):
    """Rewrite thresholded (and, with ``exact_relu``, ReLU-fed) linear layers to the activation-sparse kernel."""

    def __init__(self, exact_relu: bool = False):
        self.exact_relu = exact_relu
        self.rewritten: dict[str, float] = {}  # weight name -> threshold, after call

    def requires(self, program: ExportedProgram) -> None:
        kernels.load()

    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        self.rewritten = {}
        for node in list(ed.graph.nodes):
            if node.op != "call_function" or node.target != aten.linear.default:
                continue
            found = self._pattern(node)
            w = node.args[1]
            if found is None or not (isinstance(w, torch.fx.Node) and w.op == "placeholder"):
                continue
            spec = ed.spec_of(w)
            if spec is None or spec.target is None or len(w.users) != 1:
                continue  # a tied weight read elsewhere stays a parameter
            x, t = found
            fqn = spec.target
            with self.at(node):
                bias = node.args[2] if len(node.args) > 2 else None
                wt = ed.tensor(fqn).detach().t().contiguous()
                target = act_weight_target(fqn)
                const = ed.add_constant(target, wt, name="c_" + target.replace(".", "_"))
                op = torch.ops.sparsecc.act_sparse_linear.default
                args = (x, const, bias, t)
                with ed.graph.inserting_before(node):
                    new = ed.graph.call_function(op, args)
                new.meta["val"] = ed.fake_call(op, *args)
                for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
                    if key in node.meta:
                        new.meta[key] = node.meta[key]
                old_input = node.args[0]
                node.replace_all_uses_with(new)
                ed.graph.erase_node(node)
                _erase_dead(ed, old_input)
                ed.remove_input(w)
                self.rewritten[fqn] = t
        return PassResult(ed.finish(), bool(self.rewritten))

    def _pattern(self, linear: torch.fx.Node) -> tuple[torch.fx.Node, float] | None:
        found = thresholded_input(linear)
        if found is not None:
            return found
        x = linear.args[0]
        if self.exact_relu and isinstance(x, torch.fx.Node) and x.target == aten.relu.default:
            return x, 0.0
        return None


def _erase_dead(ed: ProgramEditor, node: object) -> None:
    """Erase the threshold's where / gt / abs once nothing reads them."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and not node.users \
            and node.target in (aten.where.ScalarOther, aten.gt.Scalar, aten.abs.default):
        nxt = node.args[0]
        ed.graph.erase_node(node)
        node = nxt
