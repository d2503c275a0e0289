"""Dependency analysis for structured pruning, on the `torch.export` graph.

Every axis of every tensor in the graph is an *atom*: an index space of some
size. Ops relate atoms: an elementwise add makes the channel axes of its two
operands the same space, a linear's output axis is the same space as its
weight's axis 0 and its bias, a ``view`` that splits ``[B, T, H*D]`` into
``[B, T, H, D]`` *factors* the hidden space into heads × head dims, a ``cat``
*partitions* its output axis into the inputs' axes. Atoms live in a
union-find; refinements (factor / partition) are kept on the class root, so a
head split seen on ``q`` also splits ``q_proj``'s rows.

After the walk, each leaf space that reaches a parameter is a
`DependencyGroup`: removing index ``i`` of the space removes the matching
slices of every parameter, buffer and constant in it, and nothing else in the
graph has to change except size constants (view shapes, conv groups,
repeat counts), which `ShrinkChannelsPass` rewrites.

A space is *pinned* (never pruned) when the analysis cannot prove that
removing an index is exact: it reaches a model input or output, a reduction
that is not a weight contraction (mean, softmax, a norm's statistics), a
contraction between two activations, an op without a coupling rule, or two
refinements that disagree. Every pin carries the reason and node, so a
report can say why a group stayed whole.

Exactness argument: the masked reference (`MaskChannelsPass`) zeroes every
parameter slice of a pruned index. Inside a group, ops act index by index,
and the only ops that mix indices are weight contractions (whose weight
slice is zero) and the pinned ops. So removing the slices (the shrunk
program) computes the same outputs, up to float summation order.

The per-op coupling rules are a table of small rule objects in
`sparsecc.passes.structured.rules` (one module per op family); the atoms and
their refinements are in `sparsecc.passes.structured.atoms`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import numpy as np
import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from .atoms import Atoms, Size, is_one, size_of
from .rules import PERMUTE, VIEW_LIKE, find_rule, flatten, opname

__all__ = [
    "UnitKind",
    "GroupMember",
    "DependencyGroup",
    "DependencyAnalysis",
    "axis_keep",
    "find_dependency_groups",
]

UnitKind = Literal["channel", "head", "strided"]


@dataclass(frozen=True)
class GroupMember:
    """One axis of one lifted tensor in a group.

    ``role``: ``out`` (a weight's output axis), ``in`` (a weight's reduction
    axis), ``param`` (a per-channel parameter: norm scale, bias, embedding),
    ``buffer`` / ``constant`` (sliced along, not zeroed in the masked reference).
    """

    target: str
    axis: int
    role: str
    kind: str  # parameter | buffer | constant


@dataclass
class DependencyGroup:
    """Indices of one space that must be removed together from every member."""

    id: int
    atom: int
    size: int
    kind: UnitKind
    members: list[GroupMember]
    reasons: list[str] = field(default_factory=list)  # why it is not prunable; empty = prunable

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def name(self) -> str:
        """A readable label: the first weight whose output axis is in the group."""
        outs = [m for m in self.members if m.role == "out"] or self.members
        m = outs[0]
        more = f" (+{len(self.members) - 1})" if len(self.members) > 1 else ""
        return f"{m.target}[axis {m.axis}]{more}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "kind": self.kind,
            "prunable": self.prunable,
            "reasons": list(self.reasons),
            "members": [
                {"target": m.target, "axis": m.axis, "role": m.role, "kind": m.kind} for m in self.members
            ],
        }


@dataclass
class DependencyAnalysis:
    """The groups of one program, plus what `ShrinkChannelsPass` needs to rewrite it."""

    groups: list[DependencyGroup]
    atoms: Atoms
    dims: dict[str, Any]  # node name -> atom per axis (list), or a list of such lists for tuples
    state_axes: dict[str, list[int]]  # lifted tensor FQN -> atom per axis
    node_atoms: dict[str, dict[str, Any]]  # per-node atoms for size constants (groups, repeats, ...)

    def prunable(self) -> list[DependencyGroup]:
        return [g for g in self.groups if g.prunable]

    def group(self, gid: int) -> DependencyGroup:
        return self.groups[gid]

    def member_coords(self, target: str, axis: int) -> dict[int, np.ndarray]:
        return self.atoms.coords(self.state_axes[target][axis])

    def summary(self) -> str:
        lines = []
        for g in self.groups:
            state = "prunable" if g.prunable else "kept: " + "; ".join(g.reasons[:2])
            lines.append(f"#{g.id} {g.kind:8s} size {g.size:5d}  {g.name}: {state}")
        return "\n".join(lines)


def axis_keep(analysis: DependencyAnalysis, target: str, axis: int, kept_by_atom: dict[int, np.ndarray]) -> np.ndarray | None:
    """Boolean keep-mask over one axis of a lifted tensor; None when nothing is removed."""
    coords = analysis.member_coords(target, axis)
    keep: np.ndarray | None = None
    for leaf, co in coords.items():
        kept = kept_by_atom.get(leaf)
        if kept is None:
            continue
        k = (co < 0) | np.isin(co, kept)
        keep = k if keep is None else keep & k
    return keep


# -- the walk ----------------------------------------------------------------------

_NO_OUTPUT = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async"}
# Ops through which a node is still a pure view of a parameter (a weight read transposed, cast, ...).
_PARAM_VIEW_OPS = VIEW_LIKE | PERMUTE | {"to", "_to_copy", "alias", "clone", "contiguous", "detach", "expand", "lift_fresh_copy"}


class _Walker:
    def __init__(self, program: ExportedProgram):
        self.program = program
        self.A = Atoms()
        self.dims: dict[str, Any] = {}
        self.state_axes: dict[str, list[int]] = {}
        self.state_kind: dict[str, str] = {}
        self.roles: dict[tuple[str, int], str] = {}
        self.param_of: dict[str, str] = {}  # node name -> parameter FQN it is a pure view of
        self.node_atoms: dict[str, dict[str, Any]] = {}

    # helpers ---------------------------------------------------------------
    def fresh(self, val: Any) -> Any:
        if isinstance(val, torch.Tensor):
            return [self.A.new(size_of(d)) for d in val.shape]
        if isinstance(val, (tuple, list)):
            return [self.fresh(v) for v in val]
        return None

    def d(self, n: Any) -> list[int] | None:
        if isinstance(n, torch.fx.Node):
            d = self.dims.get(n.name)
            if d is not None and (not d or isinstance(d[0], int)):
                return d
        return None

    def sz(self, a: int) -> Size:
        return self.A.size[self.A.find(a)]

    def pin_all(self, node: torch.fx.Node, reason: str) -> None:
        for a in list(node.args) + list(node.kwargs.values()):
            for x in (a if isinstance(a, (list, tuple)) else [a]):
                for atom in self.d(x) or []:
                    self.A.pin(atom, reason)
        out = self.dims.get(node.name)
        for atom in flatten(out):
            self.A.pin(atom, reason)

    def broadcast(self, node: torch.fx.Node, out: list[int], tensors: Iterable[Any], why: str) -> None:
        for t in tensors:
            td = self.d(t)
            if td is None:
                continue
            off = len(out) - len(td)
            for i, atom in enumerate(td):
                if off + i < 0:
                    continue
                if is_one(self.sz(atom)) or is_one(self.sz(out[off + i])):
                    continue
                self.A.unify(atom, out[off + i], why)

    def contraction(self, x_atom: int, w_atom: int, w_node: Any, x_node: Any, why: str) -> None:
        """A sum over a shared index: exact to prune only when one side is a parameter."""
        self.A.unify(x_atom, w_atom, why)
        w_param = self.param_of.get(getattr(w_node, "name", ""))
        x_param = self.param_of.get(getattr(x_node, "name", ""))
        if w_param is None and x_param is None:
            self.A.pin(x_atom, f"{why}: contracted between two activations")

    def role(self, node: Any, axis_atom: int, role: str) -> None:
        """Note that a parameter (through views) is used with ``role`` on this atom."""
        fqn = self.param_of.get(getattr(node, "name", ""))
        if fqn is None:
            return
        for ax, atom in enumerate(self.state_axes[fqn]):
            if set(self.A.tree_leaves(atom)) & set(self.A.tree_leaves(axis_atom)) or self.A.find(atom) == self.A.find(axis_atom):
                self.roles.setdefault((fqn, ax), role)

    # walk ------------------------------------------------------------------
    def run(self) -> None:
        sig = self.program.graph_signature
        spec_by_name = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
        for node in self.program.graph.nodes:
            val = node.meta.get("val")
            if node.op == "placeholder":
                dims = self.fresh(val)
                self.dims[node.name] = dims
                spec = spec_by_name.get(node.name)
                kind = {
                    InputKind.PARAMETER: "parameter",
                    InputKind.BUFFER: "buffer",
                    InputKind.CONSTANT_TENSOR: "constant",
                }.get(spec.kind) if spec else None
                if kind and spec.target is not None and isinstance(val, torch.Tensor):
                    self.state_axes[spec.target] = dims
                    self.state_kind[spec.target] = kind
                    if kind == "parameter":
                        self.param_of[node.name] = spec.target
                else:
                    for atom in flatten(dims):
                        self.A.pin(atom, f"model input {node.name}")
            elif node.op == "call_function":
                self.dims[node.name] = self.fresh(val)
                try:
                    self.rule(node)
                except Exception as e:  # a rule that cannot read this node: keep its spaces whole
                    self.pin_all(node, f"{node.name}: analysis failed ({type(e).__name__}: {e})")
            elif node.op == "output":
                for i, leaf in enumerate(torch.utils._pytree.tree_leaves(node.args[0])):
                    for atom in self.d(leaf) or []:
                        self.A.pin(atom, f"model output {getattr(leaf, 'name', i)}")
            else:
                self.dims[node.name] = self.fresh(val)
                self.pin_all(node, f"{node.name}: {node.op} nodes are not analysed")

    def rule(self, node: torch.fx.Node) -> None:
        """Propagate one node's coupling: getitem and bookkeeping here, ATen ops through `rules.RULES`."""
        name = opname(node.target)
        args = node.args
        out = self.dims[node.name]
        why = node.name
        if node.target is operator.getitem:
            src = self.dims.get(args[0].name)
            sub = src[args[1]] if isinstance(src, list) and len(src) > args[1] else None
            if isinstance(sub, list) and isinstance(out, list) and len(sub) == len(out):
                for a, b in zip(sub, out):
                    self.A.unify(a, b, why)
            elif out:
                self.pin_all(node, f"{why}: getitem of an unanalysed value")
            return
        if not isinstance(node.target, torch._ops.OpOverload):
            if out:
                self.pin_all(node, f"{why}: no coupling rule for {node.target}")
            return
        if name in _NO_OUTPUT or name == "sym_size":
            return
        if name in _PARAM_VIEW_OPS and isinstance(args[0], torch.fx.Node) and args[0].name in self.param_of:
            self.param_of[node.name] = self.param_of[args[0].name]
        rule = find_rule(node, name)
        if rule is not None:
            rule.propagate(self, node, name)
        elif out or any(self.d(a) for a in args):
            self.pin_all(node, f"{why}: no coupling rule for {node.target}")


def _inner_factor(A: Atoms, atom: int, leaf: int) -> bool | None:
    """Whether ``leaf`` sits under a non-outermost factor of ``atom`` (None: not under it)."""
    r = A.find(atom)
    if r == leaf:
        return False
    ref = A.refine.get(r)
    if ref is None:
        return None
    for i, c in enumerate(ref.children):
        inner = _inner_factor(A, c, leaf)
        if inner is not None:
            outer_before = any(not is_one(A.size[A.find(p)]) for p in ref.children[:i])
            return inner or (ref.kind == "factor" and outer_before)
    return None


def _unit_kind(A: Atoms, axis_atom: int, leaf: int, coords: np.ndarray) -> UnitKind:
    """How one unit sits in a weight axis: whole runs (a head, a conv group), one
    index (a channel; a fused projection may hold it in several places), or the
    same index repeated in every head / group (strided)."""
    idx = np.flatnonzero(coords == 0)
    if len(idx) > 1:
        runs = np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)
        if len(runs[0]) > 1:
            return "head"
    return "strided" if _inner_factor(A, axis_atom, leaf) else "channel"


def find_dependency_groups(program: ExportedProgram) -> DependencyAnalysis:
    """Group the parameter slices of ``program`` that must be removed together."""
    w = _Walker(program)
    w.run()
    A = w.A
    leaf_members: dict[int, list[GroupMember]] = {}
    order: list[int] = []
    for target, axes in w.state_axes.items():
        kind = w.state_kind[target]
        for ax, atom in enumerate(axes):
            for leaf in dict.fromkeys(A.find(l) for l in A.tree_leaves(atom)):
                size = A.size[leaf]
                if is_one(size):
                    continue
                role = w.roles.get((target, ax), "param" if kind == "parameter" else kind)
                if leaf not in leaf_members:
                    leaf_members[leaf] = []
                    order.append(leaf)
                leaf_members[leaf].append(GroupMember(target, ax, role, kind))
    groups: list[DependencyGroup] = []
    for leaf in order:
        members = leaf_members[leaf]
        size = A.size[leaf]
        reasons = list(dict.fromkeys(A.pinned(leaf)))
        if not isinstance(size, int):
            reasons.append("symbolic size")
            size = -1
        weights = [m for m in members if m.role in ("out", "in")]
        if not weights:
            continue  # kernel taps, token positions: not a space any weight is pruned along
        kind: UnitKind = "channel"
        ref = weights[0] if weights else members[0]
        if size > 0:
            axis_atom = w.state_axes[ref.target][ref.axis]
            co = A.coords(axis_atom).get(leaf)
            if co is not None:
                kind = _unit_kind(A, axis_atom, leaf, co)
        groups.append(DependencyGroup(len(groups), leaf, size, kind, members, reasons))
    return DependencyAnalysis(groups, A, w.dims, w.state_axes, w.node_atoms)
