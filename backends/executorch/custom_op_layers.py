"""The layers sparsecc's ExecuTorch custom op can replace, and the sparse formats worth timing for each.

A candidate is a prunable ``aten.linear``, or a 1x1 ``conv2d`` (stride 1, no
padding, one group, NCHW), whose float32 weight is read by that one op, with a
constant bias or none. An eval-mode BatchNorm right after such a conv is folded
into its weight and bias, as XNNPACK folds it for the dense conv: the op then
replaces both, and the stored weight is rescaled per output channel (every zero
kept). Every other prunable weight gets the reason it is not a candidate.

The 1x1 conv rule is the one every sparse pointwise kernel uses
(`sparsecc.core.analyze.conv1x1_why_not`); this finder covers only ``linear``
and 1x1 ``conv2d``, the ops the custom op has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import concrete, conv1x1_why_not, find_prunable_weights
from sparsecc.core.ir import get_node_info
from sparsecc.core.program import constant_of, placeholders_by_target
from sparsecc.kernels.executorch_ops import CONV1X1_OP, LINEAR_OP

__all__ = ["Candidate", "find_candidates", "block_choices", "compressed_targets", "BLOCKS", "MIN_FILL"]

aten = torch.ops.aten
BLOCKS = (16, 8, 4, 2)  # BSR blocks the kernels have code for, widest first
MIN_FILL = 0.75  # a block format is tried when its stored blocks are at least this full of nonzeros
_CONV = (aten.conv2d.default, aten.convolution.default)
_BN = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)


@dataclass(eq=False)  # holds tensors: compared by identity
class Candidate:
    """A layer the custom op can replace: ``weight`` is ``[N, K]`` float32 (BatchNorm folded in when ``bn``)."""

    fqn: str
    layer: str
    node: str  # the linear / conv node replaced
    op: str  # "linear" or "conv1x1"
    weight: torch.Tensor
    bias: torch.Tensor | None
    bias_node: str | None  # the placeholder the bias comes from, when it can be reused as it is
    bn: str | None  # the BatchNorm node folded in (its output is what the op replaces)
    x_shape: tuple[int, ...]

    @property
    def sparsity(self) -> float:
        return 1.0 - int(torch.count_nonzero(self.weight)) / max(1, self.weight.numel())

    @property
    def target(self) -> str:
        return CONV1X1_OP if self.op == "conv1x1" else LINEAR_OP


def compressed_targets(fqn: str) -> tuple[str, str, str]:
    """The constants' names for the compressed weight ``fqn``: crow indices, column indices, values."""
    return f"{fqn}_et_crow_indices", f"{fqn}_et_col_indices", f"{fqn}_et_values"


def block_choices(weight: torch.Tensor) -> list[int]:
    """CSR (1) and the widest BSR block whose stored blocks are at least `MIN_FILL` nonzero."""
    n, k = weight.shape
    nz = weight != 0
    nnz = int(nz.sum())
    for b in BLOCKS:
        if n % b or k % b or nnz == 0:
            continue
        stored = int(nz.reshape(n // b, b, k // b, b).any(3).any(1).sum())
        if nnz >= MIN_FILL * stored * b * b:
            return [1, b]
    return [1]


def _fold_bn(program: ExportedProgram, conv: torch.fx.Node, w: torch.Tensor, b: torch.Tensor | None):
    """(weight, bias, bn node) with the conv's only user, an eval-mode BatchNorm, folded in; else None."""
    if len(conv.users) != 1:
        return None
    bn = next(iter(conv.users))
    if bn.target not in _BN:
        return None
    if bn.target == aten.batch_norm.default:
        _, gamma, beta, mean, var, training, _, eps = bn.args[:8]
        if training:
            return None
    else:  # (input, weight, bias, running_mean, running_var, momentum, eps) -> (out, save_mean, save_invstd)
        _, gamma, beta, mean, var, _, eps = bn.args[:7]
        if any(u.target.__name__ != "getitem" or u.args[1] != 0 for u in bn.users):  # type: ignore[union-attr]
            return None
    t = [constant_of(program, a) if a is not None else None for a in (gamma, beta, mean, var)]
    if t[2] is None or t[3] is None or (gamma is not None and t[0] is None) or (beta is not None and t[1] is None):
        return None
    scale = (t[0] if t[0] is not None else 1.0) / torch.sqrt(t[3].float() + float(eps))
    bias = ((b if b is not None else 0.0) - t[2]) * scale + (t[1] if t[1] is not None else 0.0)
    return (w * scale[:, None]).detach().contiguous(), bias.detach().float().contiguous(), bn


def find_candidates(prepared: ExportedProgram, source: ExportedProgram) -> tuple[list[Candidate], dict[str, str]]:
    """The layers of ``prepared`` (a private copy of ``source``) the custom op can replace, and why not the others."""
    found: list[Candidate] = []
    why_not: dict[str, str] = {}
    src_params = placeholders_by_target(source)
    params = placeholders_by_target(prepared)
    src_nodes = {n.name: n for n in source.graph.nodes}
    for w in find_prunable_weights(source).weights:
        info = get_node_info(src_params[w.fqn]) if w.fqn in src_params else None
        param = params.get(w.fqn)
        if info is not None and info.mask:
            why_not[w.fqn] = "its mask is not folded into the weight (sparsify with fold=True)"
            continue
        weight = constant_of(prepared, param)
        if weight is None or weight.dtype != torch.float32:
            why_not[w.fqn] = "not a float32 weight here (int8 layers run XNNPACK's int8 path)"
            continue
        if len(param.users) != 1:
            why_not[w.fqn] = f"used by {len(param.users)} ops; the custom op replaces one"
            continue
        user = next(iter(param.users))
        x = user.args[0] if user.args else None
        x_val = src_nodes[x.name].meta.get("val") if isinstance(x, torch.fx.Node) and x.name in src_nodes else None
        if not isinstance(x_val, torch.Tensor) or x_val.dtype != torch.float32:
            why_not[w.fqn] = "its input is not a float32 tensor"
            continue
        x_shape = tuple(concrete(d) for d in x_val.shape)
        bias_arg = user.args[2] if len(user.args) > 2 else None
        bias = constant_of(prepared, bias_arg) if bias_arg is not None else None
        bias = bias.detach() if bias is not None else None
        if bias_arg is not None and (bias is None or bias.dtype != torch.float32):
            why_not[w.fqn] = "its bias is computed in the graph, not a float32 constant"
            continue
        if user.target == aten.linear.default and user.args[1] is param and weight.dim() == 2:
            found.append(Candidate(w.fqn, w.layer, user.name, "linear", weight.detach().contiguous(), bias,
                                   bias_arg.name if bias_arg is not None else None, None, x_shape))
            continue
        if user.target in _CONV and user.args[1] is param:
            why = conv1x1_why_not(user, tuple(weight.shape)) or (
                None if len(x_shape) == 4 else "convolution input is not 4-D (NCHW)")
            if why is not None:
                why_not[w.fqn] = why
                continue
            mat, bn = weight.detach()[:, :, 0, 0].contiguous(), None
            folded = _fold_bn(prepared, user, mat, bias)
            if folded is not None:
                mat, bias, bn = folded
            found.append(Candidate(w.fqn, w.layer, user.name, "conv1x1", mat, bias,
                                   bias_arg.name if bias_arg is not None and bn is None else None,
                                   bn.name if bn is not None else None, x_shape))
            continue
        why_not[w.fqn] = f"{user.name} ({user.target}) has no sparsecc custom op"
    return found, why_not
