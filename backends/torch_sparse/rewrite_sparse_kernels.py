"""RewriteSparseKernelsPass: run chosen layers through sparse kernels over compressed weights.

For every `KernelChoice` that is sparse, the layer's op (``linear``, a
``matmul`` / ``mm`` / ``addmm`` with the weight on the right, or a 1x1
``conv2d``) becomes ``torch.ops.sparsecc.sparse_linear`` or
``sparse_conv1x1`` over the weight compressed once, here, into three lifted
constants (``<fqn>_sparse_crow_indices``, ``_col_indices``, ``_values``;
CSR, or BSR with square blocks). The dense parameter leaves the program, so
the saved program holds only the compressed weight. The result is still a
graph (the ops have fake kernels), exports, saves and loads (after
`sparsecc.kernels.load()`), and computes what the dense program did, up to
fp32 summation order.

An int8 choice (``int8_g4`` / ``int8_bsr``, on a weight with an int8 grid from
`sparsecc.passes.QuantizeWeightsPass`) becomes ``torch.ops.sparsecc.int8_linear``
over five constants (`int8_targets`): the same integers and scales, so the
program computes the fake-quantized layer with int8 activations. A choice
measured fastest on another ISA passes it to the op.

Choices come from `sparsecc.kernel_select` (measured, or fixed).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch.export import ExportedProgram

import sparsecc.kernels as kernels
from sparsecc.backends.torch_sparse.kernel_select import KernelChoice, KernelLayer, find_kernel_layers, weight_matrix
from sparsecc.backends.torch_sparse.int8_select import INT8_KERNELS, layer_quant
from sparsecc.core.ir import get_node_info
from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor

__all__ = ["RewriteSparseKernelsPass", "compressed_targets", "int8_targets"]


def int8_targets(fqn: str) -> tuple[str, str, str, str, str]:
    """The constants of an int8 layer: crow, col, int8 values, per-row scales, per-row integer sums."""
    return tuple(f"{fqn}_int8_{k}" for k in ("crow_indices", "col_indices", "values", "scale", "row_sums"))


def compressed_targets(fqn: str) -> tuple[str, str, str]:
    """The constants' names for the compressed weight ``fqn``: crow indices, column indices, values."""
    return f"{fqn}_sparse_crow_indices", f"{fqn}_sparse_col_indices", f"{fqn}_sparse_values"


class RewriteSparseKernelsPass(PassBase):
    """Replace each layer chosen sparse by a sparse-kernel op; dense choices are left alone."""

    def __init__(self, choices: Iterable[KernelChoice] | Mapping[str, KernelChoice]):
        items = choices.values() if isinstance(choices, Mapping) else choices
        self.choices = {c.fqn: c for c in items if c.sparse}
        for c in self.choices.values():
            if c.kernel not in kernels.KERNELS + INT8_KERNELS:
                raise ValueError(f"{c.fqn}: unknown kernel {c.kernel!r}; choose from "
                                 f"{', '.join(kernels.KERNELS + INT8_KERNELS)}")

    def requires(self, program: ExportedProgram) -> None:
        kernels.load()
        layers, why_not = find_kernel_layers(program)
        found = {lay.fqn for lay in layers}
        for fqn in self.choices:
            if fqn not in found:
                why = why_not.get(fqn, "not a prunable weight of this program")
                raise ValueError(f"{fqn} cannot run a sparse kernel: {why}")
            if self.choices[fqn].kernel in INT8_KERNELS:
                lay = next(lay for lay in layers if lay.fqn == fqn)
                if layer_quant(program, lay) is None:
                    raise ValueError(f"{fqn} cannot run {self.choices[fqn].kernel}: its weight has no int8 grid "
                                     "(QuantizeWeightsPass) or the layer is not a linear with in_features % 4 == 0")

    def call(self, program: ExportedProgram) -> PassResult:
        if not self.choices:
            return PassResult(program, False)
        layers = {lay.fqn: lay for lay in find_kernel_layers(program)[0] if lay.fqn in self.choices}
        ed = ProgramEditor(program)
        nodes = {n.name: n for n in ed.graph.nodes}
        for fqn, choice in self.choices.items():
            layer = layers[fqn]
            with self.at(layer.node):
                self._rewrite(ed, nodes, layer, choice, weight_matrix(program, layer))
        return PassResult(ed.finish(), True)

    def _rewrite(self, ed: ProgramEditor, nodes: dict, layer: KernelLayer, choice: KernelChoice,
                 weight: torch.Tensor) -> None:
        user = nodes[layer.node]
        param = ed.node_for_target(layer.fqn)
        x, bias = _operands(user)
        if choice.kernel in INT8_KERNELS:
            quant = get_node_info(param).extra["quant"]
            scale = ed.tensor(quant["scale"])
            q = torch.round(weight / scale[:, None]).to(torch.int8)  # exact: the weight is q * scale
            iw = kernels.compress_int8(q, scale, (1, 4) if choice.block == 1 else choice.block)
            consts = [ed.add_constant(t, v, name="c_" + t.replace(".", "_")) for t, v in zip(
                int8_targets(layer.fqn), (iw.crow_indices, iw.col_indices, iw.values, iw.scale, iw.row_sums))]
            op = torch.ops.sparsecc.int8_linear.default
            args = (x, *consts, bias, layer.shape[0], float(quant.get("act_scale") or 0.0), choice.isa)
        else:
            cw = kernels.compress(weight, choice.block)
            consts = [ed.add_constant(t, v, name="c_" + t.replace(".", "_"))
                      for t, v in zip(compressed_targets(layer.fqn), (cw.crow_indices, cw.col_indices, cw.values))]
            op = (torch.ops.sparsecc.sparse_conv1x1.default if layer.op == "conv1x1"
                  else torch.ops.sparsecc.sparse_linear.default)
            args = (x, *consts, bias, layer.shape[0], choice.kernel, *((choice.isa,) if choice.isa else ()))
        with ed.graph.inserting_before(user):
            new = ed.graph.call_function(op, args)
        new.meta["val"] = ed.fake_call(op, *args)
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
            if key in user.meta:
                new.meta[key] = user.meta[key]
        user.replace_all_uses_with(new)
        ed.graph.erase_node(user)
        for n in list(param.users):  # a transpose that fed only this op
            if not n.users:
                ed.graph.erase_node(n)
        if not param.users:
            ed.remove_input(param)

    def ensures(self, program: ExportedProgram) -> None:
        remaining = set(self.choices) & set(program.state_dict)
        if remaining:
            raise AssertionError(f"weights still dense after the rewrite: {sorted(remaining)}")


def _operands(user: torch.fx.Node):
    """The activation and bias nodes of the op being replaced."""
    aten = torch.ops.aten
    t, args = user.target, user.args
    if t == aten.addmm.default:
        return args[1], args[0]
    if t in (aten.matmul.default, aten.mm.default):
        return args[0], None
    if t == aten.linear.default:
        return args[0], args[2] if len(args) > 2 else None
    # conv2d(x, w, bias, ...) and convolution(x, w, bias, ...)
    return args[0], args[2] if len(args) > 2 else None
