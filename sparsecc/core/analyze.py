"""Find the prunable weights of a captured program, from the graph itself.

A parameter is a prunable weight when an op that multiplies by it consumes it
as a weight: ``aten.linear`` (arg 1), ``aten.conv1d/2d/3d`` and
``aten.convolution`` (arg 1, not transposed), ``aten.matmul`` / ``mm`` /
``addmm`` with the parameter as an operand, possibly through a 2-D
transpose. Embedding tables (``aten.embedding``) are found too, with role
``embedding``; recipes leave them dense unless asked. Module types play no part, so functional and Hugging Face models
are found the same way.

Every weight gets the two axes that the patterns need, in the parameter's
own layout: ``reduction_axis`` (the axis summed over: ``in_features`` of a
linear ``[out, in]``; input channels, axis 1, of a conv ``[Cout, Cin/g, kh, kw]``;
axis 0 of a ``W`` in ``x @ W``) and ``output_axis``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from sparsecc.core.ir import get_node_info

__all__ = [
    "Role",
    "PrunableWeight",
    "SkippedWeight",
    "Analysis",
    "find_prunable_weights",
    "as_matrix",
    "concrete",
    "weight_uses",
    "conv1x1_why_not",
]

Role = Literal["linear", "conv", "matmul", "embedding"]

aten = torch.ops.aten
_LINEAR = {aten.linear.default}
_CONV = {
    aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
    aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding,
}
_CONVOLUTION = {aten.convolution.default}
_EMBEDDING = {aten.embedding.default}
_CONV_TRANSPOSE = {aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}
_MATMUL = {aten.matmul.default, aten.mm.default}
_ADDMM = {aten.addmm.default}
# 2-D views that only swap the two axes of a weight.
_TRANSPOSES = {aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default}


@dataclass(frozen=True)
class PrunableWeight:
    """One parameter that can be made sparse, as the graph uses it."""

    fqn: str
    node: str
    layer: str
    role: Role
    op: str
    shape: tuple[int, ...]
    reduction_axis: int
    output_axis: int
    groups: int
    flops: int
    consumers: tuple[str, ...]
    tied_uses: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def tied(self) -> bool:
        """Also used by ops that do not multiply by it (an embedding, say)."""
        return bool(self.tied_uses)

    @property
    def reduction_size(self) -> int:
        return self.shape[self.reduction_axis]

    @property
    def out_size(self) -> int:
        return self.shape[self.output_axis]

    def to_dict(self) -> dict[str, Any]:
        return {
            "fqn": self.fqn,
            "layer": self.layer,
            "role": self.role,
            "op": self.op,
            "shape": list(self.shape),
            "params": self.numel,
            "flops": self.flops,
            "reduction_axis": self.reduction_axis,
            "output_axis": self.output_axis,
            "groups": self.groups,
            "tied_uses": list(self.tied_uses),
        }


@dataclass(frozen=True)
class SkippedWeight:
    fqn: str
    reason: str


@dataclass
class Analysis:
    weights: list[PrunableWeight] = field(default_factory=list)
    skipped: list[SkippedWeight] = field(default_factory=list)

    def by_fqn(self) -> dict[str, PrunableWeight]:
        return {w.fqn: w for w in self.weights}

    @property
    def total_params(self) -> int:
        return sum(w.numel for w in self.weights)

    @property
    def total_flops(self) -> int:
        return sum(w.flops for w in self.weights)


def concrete(d: Any) -> int:
    """An int for a static or symbolic size, using the example's value."""
    if isinstance(d, torch.SymInt):
        hint = d.node.hint
        return int(hint) if hint is not None else 1
    return int(d)


def _numel(val: Any) -> int:
    if isinstance(val, torch.Tensor):
        return math.prod(concrete(d) for d in val.shape)
    if isinstance(val, (tuple, list)) and val:
        return _numel(val[0])
    return 0


def _layer_name(node: torch.fx.Node, fqn: str) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return str(path)
    return fqn.rsplit(".", 1)[0] if fqn.endswith(".weight") else fqn


@dataclass
class _Use:
    role: Role
    node: torch.fx.Node
    reduction_axis: int
    output_axis: int
    groups: int = 1
    operand: torch.fx.Node | None = None  # the weight as the op reads it (after transposes, masks)


def _classify(user: torch.fx.Node, operand: torch.fx.Node, swapped: bool, ndim: int) -> _Use | str | None:
    """How ``user`` consumes ``operand`` (the weight, transposed when ``swapped``).

    Returns a `_Use`, a reason string when the op multiplies by the weight in a
    way sparsecc cannot prune, or None when the op does not multiply by it.
    """
    t, args = user.target, user.args

    def axes(red: int, out: int) -> tuple[int, int]:
        return (out, red) if swapped else (red, out)

    if t in _LINEAR and len(args) > 1 and args[1] is operand:
        if ndim != 2:
            return f"{ndim}-D linear weight"
        return _Use("linear", user, *axes(1, 0))
    if t in _CONV and len(args) > 1 and args[1] is operand:
        if swapped:
            return "transposed conv weight"
        groups = int(args[6]) if len(args) > 6 else int(user.kwargs.get("groups", 1))
        return _Use("conv", user, 1, 0, groups)
    if t in _CONVOLUTION and len(args) > 1 and args[1] is operand:
        if args[6]:
            return "transposed convolution (ConvTranspose) is not supported"
        return _Use("conv", user, 1, 0, int(args[8]))
    if t in _EMBEDDING and args[0] is operand:
        if swapped or ndim != 2:
            return "embedding table used transposed"
        return _Use("embedding", user, 1, 0)  # rows are tokens; patterns run along the hidden axis
    if t in _CONV_TRANSPOSE and len(args) > 1 and args[1] is operand:
        return "transposed convolution (ConvTranspose) is not supported"
    if t in _MATMUL or t in _ADDMM:
        a, b = (args[1], args[2]) if t in _ADDMM else (args[0], args[1])
        if operand is not a and operand is not b:
            return None  # addmm's bias
        if ndim != 2:
            return f"{ndim}-D matmul operand"
        if b is operand:  # x @ W: W is [K, N]
            return _Use("matmul", user, *axes(0, 1))
        if a is operand:  # W @ x: W is [N, K]
            return _Use("matmul", user, *axes(1, 0))
    return None


def _is_mask_application(user: torch.fx.Node, operand: torch.fx.Node) -> bool:
    """The ``mul(weight, mask)`` that `InsertMasksPass` puts in front of a weight."""
    info = get_node_info(user)
    return info is not None and info.apply_mask_of is not None and user.args[0] is operand


def _uses(param: torch.fx.Node, ndim: int) -> tuple[list[_Use], list[str], list[str]]:
    """Walk the weight's users (through 2-D transposes): prunable uses, other uses, problems."""
    uses: list[_Use] = []
    other: list[str] = []
    problems: list[str] = []
    stack: list[tuple[torch.fx.Node, bool]] = [(param, False)]
    while stack:
        operand, swapped = stack.pop()
        for user in operand.users:
            if user.target in _TRANSPOSES and ndim == 2:
                stack.append((user, not swapped))
                continue
            if _is_mask_application(user, operand):
                stack.append((user, swapped))
                continue
            use = _classify(user, operand, swapped, ndim)
            if isinstance(use, _Use):
                use.operand = operand
                uses.append(use)
            elif isinstance(use, str):
                problems.append(f"{user.name}: {use}")
            else:
                other.append(f"{user.name} ({user.target})")
    return uses, other, problems


def find_prunable_weights(program: ExportedProgram) -> Analysis:
    """List every prunable weight of ``program``, with role, axes, FLOPs and layer."""
    analysis = Analysis()
    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    order = {n.name: i for i, n in enumerate(program.graph.nodes)}
    for spec in program.graph_signature.input_specs:
        if spec.kind != InputKind.PARAMETER:
            continue
        node = by_name[spec.arg.name]
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        shape = tuple(concrete(d) for d in val.shape)
        uses, other, problems = _uses(node, len(shape))
        if problems:
            analysis.skipped.append(SkippedWeight(spec.target, "; ".join(problems)))
            continue
        if not uses:
            continue
        layouts = {(u.reduction_axis, u.output_axis) for u in uses}
        if len(layouts) > 1:
            kinds = sorted({(u.role, u.reduction_axis, u.output_axis) for u in uses})
            analysis.skipped.append(SkippedWeight(spec.target, f"used with different layouts: {kinds}"))
            continue
        # A table that is also a matmul weight (tied embeddings) is that matmul's
        # weight; its lookups count as tied uses, which selection treats with care.
        multiplies = [u for u in uses if u.role != "embedding"]
        first = (multiplies or uses)[0]
        other += [f"{u.node.name} ({u.node.target})" for u in uses if u.role != first.role]
        uses = [u for u in uses if u.role == first.role]
        k = math.prod(shape) // shape[first.output_axis]
        flops = 0 if first.role == "embedding" else sum(2 * _numel(u.node.meta.get("val")) * k for u in uses)
        analysis.weights.append(
            PrunableWeight(
                fqn=spec.target,
                node=node.name,
                layer=_layer_name(first.node, spec.target),
                role=first.role,
                op=str(first.node.target),
                shape=shape,
                reduction_axis=first.reduction_axis,
                output_axis=first.output_axis,
                groups=first.groups,
                flops=flops,
                consumers=tuple(u.node.name for u in uses),
                tied_uses=tuple(other),
            )
        )
    # Execution order (first consumer in the graph), which skip-first/last use.
    analysis.weights.sort(key=lambda w: min(order[c] for c in w.consumers))
    return analysis


def weight_uses(program: ExportedProgram, param: torch.fx.Node) -> list[tuple[torch.fx.Node, torch.fx.Node]]:
    """The ops that multiply by the weight placeholder ``param``: ``(op node, weight operand)`` pairs.

    The operand is the weight as the op reads it (after transposes and masks),
    so callers can tell the weight operand from the activation operand.
    """
    val = param.meta.get("val")
    ndim = val.dim() if isinstance(val, torch.Tensor) else 0
    uses, _, _ = _uses(param, ndim)
    multiplies = [u for u in uses if u.role != "embedding"]
    return [(u.node, u.operand) for u in multiplies]  # type: ignore[misc]


def as_matrix(weight: torch.Tensor, output_axis: int, reduction_axis: int) -> torch.Tensor:
    """View a weight as ``[out, ..., reduction]``: output axis first, reduction axis last.

    N:M groups run along the last axis of this view; blocks and channels use
    its 2-D flattening ``[out, rest]``. `torch.Tensor.permute` is its own
    inverse pairing with ``movedim`` back, see `from_matrix` in `masks`.
    """
    return weight.movedim((output_axis, reduction_axis), (0, -1))


_CONVOLUTIONS = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)


def _pair(v: Any) -> tuple[int, ...]:
    return (int(v),) * 2 if isinstance(v, int) else tuple(int(x) for x in v)


def conv1x1_why_not(conv: torch.fx.Node, weight_shape: Sequence[int]) -> str | None:
    """Why a ``conv2d`` / ``convolution`` node is not a plain pointwise product (a 1x1 kernel, stride and
    dilation 1, no padding, one group, 4-D input), or None when it is: the rule every sparse 1x1 kernel
    (torch-sparse, ExecuTorch) replaces by."""
    if conv.target not in _CONVOLUTIONS:
        return f"{conv.name} ({conv.target}) is not a convolution"
    if len(weight_shape) != 4 or tuple(weight_shape[2:]) != (1, 1):
        return "convolution kernel is not 1x1"
    args = list(conv.args) + [None] * 9
    if conv.target == torch.ops.aten.convolution.default:
        stride, padding, dilation, transposed, groups = args[3], args[4], args[5], args[6], args[8]
        if transposed:
            return "transposed convolution"
    else:  # conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)
        stride, padding, dilation, groups = args[3] or 1, args[4] or 0, args[5] or 1, args[6] or 1
    if _pair(stride) != (1, 1):
        return f"1x1 convolution with stride {list(_pair(stride))}"
    if isinstance(padding, str) or _pair(padding) != (0, 0):
        return f"1x1 convolution with padding {padding}"
    if _pair(dilation) != (1, 1):
        return f"1x1 convolution with dilation {list(_pair(dilation))}"
    if int(groups) != 1:
        return f"grouped 1x1 convolution (groups={groups})"
    x = conv.args[0].meta.get("val") if isinstance(conv.args[0], torch.fx.Node) else None
    if isinstance(x, torch.Tensor) and x.dim() != 4:  # an unknown shape is the caller's to judge
        return "convolution input is not 4-D (NCHW)"
    return None
