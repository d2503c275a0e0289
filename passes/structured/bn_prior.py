"""What a channel feeds downstream, predicted from the BatchNorm in front of it: no data needed.

Most CNN layers read ``act(BatchNorm(x))``. On the data the network was
trained on, BatchNorm's running statistics normalise ``x`` to zero mean and
unit variance, so its output channel ``c`` is close to ``N(β_c, γ_c²)``.
Pushing that Gaussian through the elementwise ops between the norm and the
layer (ReLU6, SiLU, zero padding, ...) gives the mean and variance of every
input channel of the layer from the weights alone: the statistics of the
training data, which calibration photos of bricks and text do not have.

Two uses (the "data-free" criteria of e.g. Nagel et al. 2019's bias
correction, applied to whole channels):

- **importance** (structured criterion ``bn_energy``): unit ``c`` adds
  ``Σ_k W[o, c, k]² Var[a_c]`` to the variance of each output ``o`` of every
  layer that reads it. Divided by that output's scale (``σ_o² / γ_o²`` of the
  BatchNorm after the layer, or the output's predicted variance) and summed
  over outputs, it is the share of normalised signal the unit carries: comparable
  across layers, so a global ranking needs no per-layer normalisation;
- **compensation** (`compensate_removed_means`): what a removed channel fed
  the layer on average, ``W[:, R] E[a_R]``, is a constant per output, which the
  BatchNorm after the layer (its running mean) or the layer's bias absorbs;
  the variance it carried comes off that BatchNorm's running variance, so the
  next layers see the scale they were trained on.

Layers whose input does not come from a BatchNorm through elementwise ops get
no prediction (``None``); callers fall back to another criterion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
from torch.export import ExportedProgram

from sparsecc.core.analyze import find_prunable_weights, weight_uses
from sparsecc.core.program import ProgramEditor, placeholders_by_target, state_tensor

from .dependency import DependencyAnalysis, DependencyGroup, axis_keep
from .rules import opname

__all__ = ["BnPrior", "ChannelMoments", "input_moments", "compensate_removed_means"]

# Ops that pass a channel's value through unchanged or elementwise, by name: applied to the
# Gaussian samples as the graph applies them (their non-tensor arguments included).
_UNARY = {
    "relu", "relu6", "hardtanh", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "clamp", "clamp_min", "clamp_max",
}
_IDENTITY = {"clone", "contiguous", "alias", "detach", "dropout", "_to_copy", "to",
             "pad", "constant_pad_nd"}  # zero padding: border effects are ignored
_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training"}
_SAMPLES = 4096


@dataclass(frozen=True)
class ChannelMoments:
    """Per input channel of a layer: mean and variance of what it reads, and the norm they come from."""

    mean: torch.Tensor  # [C]
    var: torch.Tensor  # [C]
    norm: str  # the BatchNorm node


def _lifted(program: ExportedProgram) -> dict[torch.fx.Node, str]:
    """Placeholder node -> the FQN of the parameter / buffer / constant it lifts."""
    return {node: target for target, node in placeholders_by_target(program).items()}


def _norm_params(program: ExportedProgram, lifted: dict[torch.fx.Node, str],
                 node: torch.fx.Node) -> tuple[torch.Tensor | None, ...]:
    """(γ, β, running_mean, running_var, eps) of a BatchNorm node; None for an argument that is not a lifted tensor."""

    def tensor(arg: Any) -> torch.Tensor | None:
        target = lifted.get(arg) if isinstance(arg, torch.fx.Node) else None
        return None if target is None else state_tensor(program, target).detach().float()

    a = node.args
    eps = a[7] if opname(node.target) == "batch_norm" else a[6]
    return tensor(a[1]), tensor(a[2]), tensor(a[3]), tensor(a[4]), float(eps)


def _norm_node(node: Any) -> torch.fx.Node | None:
    """``node`` as a BatchNorm output: the batch_norm node, or getitem 0 of the no-training one."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return None
    if opname(node.target) == "batch_norm":
        return node
    if opname(node.target) == "getitem" and node.args[1] == 0:
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and opname(src.target) == "_native_batch_norm_legit_no_training":
            return src
    return None


def input_moments(program: ExportedProgram, activation: Any,
                  lifted: dict[torch.fx.Node, str] | None = None) -> ChannelMoments | None:
    """Predicted per-channel (axis 1) mean and variance of ``activation`` (a node), or None.

    Walks back through elementwise ops to a BatchNorm; None when another op
    comes first or the norm's running statistics are not lifted tensors.
    ``lifted`` (placeholder -> FQN) saves rebuilding that map on every call.
    """
    chain: list[torch.fx.Node] = []
    node = activation
    while True:
        norm = _norm_node(node)
        if norm is not None:
            break
        if not isinstance(node, torch.fx.Node) or node.op != "call_function":
            return None
        name = opname(node.target)
        if name not in _UNARY and name not in _IDENTITY:
            return None
        chain.append(node)
        node = node.args[0]
    gamma, beta, mean, var, _ = _norm_params(program, _lifted(program) if lifted is None else lifted, norm)
    if mean is None or var is None:
        return None
    channels = mean.numel()
    gamma = torch.ones(channels) if gamma is None else gamma
    beta = torch.zeros(channels) if beta is None else beta
    # deterministic quantiles of N(0, 1) instead of random draws
    q = torch.special.ndtri((torch.arange(_SAMPLES, dtype=torch.float64) + 0.5) / _SAMPLES).float()
    z = beta[:, None] + gamma[:, None] * q[None, :]
    for op in reversed(chain):
        if opname(op.target) in _UNARY:
            z = op.target(z, *op.args[1:], **op.kwargs)
    return ChannelMoments(z.mean(1), z.var(1, unbiased=False), norm.name)


def _output_norm(use: torch.fx.Node) -> torch.fx.Node | None:
    """The BatchNorm that reads ``use``'s output directly (its only user), if any."""
    users = list(use.users)
    if len(users) != 1:
        return None
    n = users[0]
    if opname(n.target) in _NORMS and n.args[0] is use:
        return n
    return None


@dataclass(frozen=True)
class _Consumer:
    fqn: str
    use: torch.fx.Node
    weight: torch.Tensor  # as stored: [out, in, kernel...] (conv) or [out, in] (linear)
    moments: ChannelMoments
    norm: torch.fx.Node | None  # the BatchNorm reading the op's output, if any
    out_scale: torch.Tensor  # [out]: 1 / the output's variance before the next norm's affine


def _per_input(w: torch.Tensor) -> torch.Tensor:
    """``[out, in, kernel...]`` summed over the kernel: ``[out, in]``."""
    return w.flatten(2).sum(2) if w.dim() > 2 else w


class BnPrior:
    """The BatchNorm predictions of one program, looked up per weight (and cached)."""

    def __init__(self, program: ExportedProgram):
        self.program = program
        self.weights = find_prunable_weights(program).by_fqn()
        self.nodes = {n.name: n for n in program.graph.nodes}
        self.lifted = _lifted(program)
        self._cache: dict[str, list[_Consumer]] = {}

    def consumers(self, fqn: str, axis: int) -> list[_Consumer]:
        """The ops that multiply the input channels (``axis``) of weight ``fqn`` by a predicted activation."""
        w = self.weights.get(fqn)
        if w is None or w.role not in ("conv", "linear") or w.groups != 1 or axis != w.reduction_axis or axis != 1:
            return []
        if fqn not in self._cache:
            self._cache[fqn] = self._find(fqn, w)
        return self._cache[fqn]

    def _find(self, fqn: str, w: Any) -> list[_Consumer]:
        weight = state_tensor(self.program, fqn).detach().float()
        out = []
        for use, _ in weight_uses(self.program, self.nodes[w.node]):
            act = use.args[0]
            val = act.meta.get("val") if isinstance(act, torch.fx.Node) else None
            if val is None or (w.role == "linear" and val.dim() != 2):  # linear: [batch, C] only (axis 1 = channels)
                continue
            moments = input_moments(self.program, act, self.lifted)
            if moments is None or moments.mean.numel() != weight.shape[1]:
                continue
            norm = _output_norm(use)
            if norm is not None:
                gamma, _, _, rvar, eps = _norm_params(self.program, self.lifted, norm)
                scale = (gamma.square() if gamma is not None else torch.ones_like(rvar)) / (rvar + eps)
            else:  # no norm: relative to the output's predicted variance
                scale = 1.0 / (_per_input(weight.square()) @ moments.var).clamp_min(1e-12)
            out.append(_Consumer(fqn, use, weight, moments, norm, scale.float()))
        return out

    def scores(self, analysis: DependencyAnalysis, group: DependencyGroup) -> np.ndarray | None:
        """One score per unit of ``group``: the share of its consumers' normalised output variance it carries.

        None when no consumer of the group reads a BatchNorm-predicted activation.
        """
        score = np.zeros(group.size)
        found = False
        for m in group.members:
            if m.role != "in" or m.kind != "parameter":
                continue
            for c in self.consumers(m.target, m.axis):
                per_channel = (c.out_scale[:, None] * _per_input(c.weight.square())).sum(0) * c.moments.var
                co = analysis.member_coords(m.target, m.axis)[group.atom]
                valid = co >= 0
                np.add.at(score, co[valid], per_channel.double().numpy()[valid])
                found = True
        return score if found else None


def compensate_removed_means(
    dense: ExportedProgram,
    small: ExportedProgram,
    plan: Any,
    *,
    skip: set[str] | frozenset[str] = frozenset(),
    min_var_fraction: float = 0.1,
) -> tuple[ExportedProgram, list[str], dict[str, str]]:
    """Fold the predicted mean of every removed input channel into the next BatchNorm or bias.

    For each layer that lost input channels ``R`` and reads a BatchNorm-predicted
    activation: the BatchNorm after it gets ``running_mean -= W[:, R] E[a_R]``
    and ``running_var -= Σ W[:, R]² Var[a_R]`` (kept at ``min_var_fraction``
    of its old value at least); without such a BatchNorm, the layer's bias gets
    ``+= W[:, R] E[a_R]``. ``small`` is ``dense`` shrunk with ``plan``; layers in
    ``skip`` (already repaired by least squares) are left alone. Returns the
    program, the tensors changed and, per layer left as it was, why.
    """
    kept = plan.kept_by_atom()
    layers = {t: keep for t, (_, keep) in plan.narrowed_inputs().items() if t not in skip}
    editor = ProgramEditor(small)
    new: dict[str, torch.Tensor] = {}
    notes: dict[str, str] = {}

    def current(target: str) -> torch.Tensor:
        return new[target] if target in new else editor.tensor(target).detach().clone()

    def out_keep(target: str, size: int) -> np.ndarray:
        k = axis_keep(plan.analysis, target, 0, kept) if target in plan.analysis.state_axes else None
        return np.ones(size, bool) if k is None else k

    prior = BnPrior(dense)
    lifted = prior.lifted
    for fqn, keep in layers.items():
        consumers = prior.consumers(fqn, 1)
        if not consumers:
            notes[fqn] = "its input does not come from a BatchNorm through elementwise ops: no prediction"
            continue
        drop = torch.from_numpy(~keep)
        for c in consumers:
            w = c.weight[:, drop]
            shift = _per_input(w) @ c.moments.mean[drop]  # [out]
            lost_var = _per_input(w.square()) @ c.moments.var[drop]
            norm = c.norm
            if norm is not None and norm.args[3] in lifted and norm.args[4] in lifted:
                rm, rv = lifted[norm.args[3]], lifted[norm.args[4]]
                k = torch.from_numpy(out_keep(rm, shift.numel()))
                mean = current(rm)
                new[rm] = mean - shift[k].to(mean.dtype)
                var = current(rv)
                new[rv] = torch.maximum(var - lost_var[k].to(var.dtype), min_var_fraction * var)
                continue
            bias = c.use.args[2] if len(c.use.args) > 2 else None
            if isinstance(bias, torch.fx.Node) and bias in lifted:
                b = lifted[bias]
                k = torch.from_numpy(out_keep(b, shift.numel()))
                value = current(b)
                new[b] = value + shift[k].to(value.dtype)
                continue
            notes[fqn] = f"no BatchNorm after {c.use.name} and no bias to absorb the mean of its removed inputs"
    for target, value in new.items():
        editor.set_tensor(target, value)
    return (editor.finish() if new else small), sorted(new), notes
