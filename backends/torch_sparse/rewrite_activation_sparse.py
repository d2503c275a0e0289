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
parameter leaves the program unless another op reads it (a tied embedding).
A weight with a mask or a sparse-kernel choice is left alone (weight
sparsity's kernels take it).

With ``gemv_max_tokens`` > 0, every other linear layer called on at most that
many tokens is timed against the same kernel with no input skipped (threshold
-1: a dense matrix-vector product that streams the transposed weight), and
moved to it where that measured faster by ``margin``: at one token torch's own
product of a wide layer (a language model's head) is the slowest op left.
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram

import sparsecc.kernels as kernels
from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor
from sparsecc.core.timing import time_interleaved
from sparsecc.passes.activation_sparsity import thresholded_input

__all__ = ["RewriteActivationSparsePass", "act_weight_target"]

aten = torch.ops.aten


def act_weight_target(fqn: str) -> str:
    """The constant holding the transposed weight of activation-sparse layer ``fqn``."""
    return f"{fqn}_act_t"


class RewriteActivationSparsePass(PassBase):
    """Rewrite thresholded (and, with ``exact_relu``, ReLU-fed) linear layers to the activation-sparse kernel."""

    def __init__(self, exact_relu: bool = False, gemv_max_tokens: int = 0, margin: float = 1.1):
        self.exact_relu, self.gemv_max_tokens, self.margin = exact_relu, gemv_max_tokens, margin
        self.rewritten: dict[str, float] = {}  # weight name -> threshold (-1: dense gemv), after call
        self.timings: dict[str, dict[str, float]] = {}  # gemv candidates: torch and kernel medians, ms

    def requires(self, program: ExportedProgram) -> None:
        kernels.load()

    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        self.rewritten = {}
        for node in list(ed.graph.nodes):
            if node.op != "call_function" or node.target != aten.linear.default:
                continue
            w = node.args[1]
            if not (isinstance(w, torch.fx.Node) and w.op == "placeholder"):
                continue
            spec = ed.spec_of(w)
            if spec is None or spec.target is None:
                continue
            fqn = spec.target
            found = self._pattern(node)
            if found is None:  # no sparse input: the kernel as a dense gemv, where that measured faster
                if not self._gemv_pays(ed, node, fqn):
                    continue
                found = (node.args[0], -1.0)
            x, t = found
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
                if not w.users:
                    ed.remove_input(w)
                self.rewritten[fqn] = t
        return PassResult(ed.finish(), bool(self.rewritten))

    def _gemv_pays(self, ed: ProgramEditor, linear: torch.fx.Node, fqn: str) -> bool:
        if self.gemv_max_tokens <= 0 or fqn in self.rewritten:
            return False
        val = linear.args[0].meta.get("val") if isinstance(linear.args[0], torch.fx.Node) else None
        if not isinstance(val, torch.Tensor) or not all(isinstance(d, int) for d in val.shape):
            return False  # a dynamic token count: no shape to time
        rows = val.numel() // val.shape[-1]
        if rows > self.gemv_max_tokens or val.dtype != torch.float32:
            return False
        w = ed.tensor(fqn).detach()
        bias_node = linear.args[2] if len(linear.args) > 2 else None
        bias = ed.tensor(ed.spec_of(bias_node).target) if isinstance(bias_node, torch.fx.Node) \
            and bias_node.op == "placeholder" and ed.spec_of(bias_node) is not None else None
        x = torch.randn(tuple(val.shape))
        wt = w.t().contiguous()
        timing = time_interleaved({
            "torch": lambda: torch.nn.functional.linear(x, w, bias),
            "gemv": lambda: torch.ops.sparsecc.act_sparse_linear(x, wt, bias, -1.0),
        }, warmup=2, rounds=9)
        med = timing.medians()
        self.timings[fqn] = {"torch_ms": med["torch"] * 1e3, "gemv_ms": med["gemv"] * 1e3}
        return med["torch"] > self.margin * med["gemv"]

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
