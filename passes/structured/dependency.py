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
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import numpy as np
import sympy
import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

__all__ = [
    "UnitKind",
    "GroupMember",
    "DependencyGroup",
    "DependencyAnalysis",
    "find_dependency_groups",
]

UnitKind = Literal["channel", "head", "strided"]

aten = torch.ops.aten
Size = Any  # int or sympy expression


def _size(d: Any) -> Size:
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        return int(expr) if expr.is_number else expr
    return int(d)


def _is_static(s: Size) -> bool:
    return isinstance(s, int)


def _eq(a: Size, b: Size) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0


def _div(a: Size, b: Size) -> Size | None:
    """``a / b`` when exact, else None."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b and a % b == 0 else None
    q = sympy.simplify(sympy.sympify(a) / sympy.sympify(b))
    num, den = sympy.fraction(sympy.together(q))
    if den != 1:
        return None
    return int(q) if q.is_number else q


def _is_one(s: Size) -> bool:
    return isinstance(s, int) and s == 1


@dataclass
class _Refinement:
    kind: Literal["factor", "partition"]
    children: list[int]


class _Atoms:
    """Union-find over index spaces, with factor / partition refinements and pins."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[Size] = []
        self.refine: dict[int, _Refinement] = {}
        self.pins: dict[int, list[str]] = {}
        self.uppers: dict[int, set[int]] = {}  # atoms this one is a refinement child of

    def new(self, size: Size) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def pin(self, a: int, reason: str) -> None:
        r = self.find(a)
        reasons = self.pins.setdefault(r, [])
        if len(reasons) < 8 and reason not in reasons:
            reasons.append(reason)

    def refinement(self, a: int) -> _Refinement | None:
        return self.refine.get(self.find(a))

    def _refine(self, a: int, kind: str, sizes: list[Size]) -> list[int]:
        r = self.find(a)
        children = [self.new(s) for s in sizes]
        for c in children:
            self.uppers[c] = {r}
        self.refine[r] = _Refinement(kind, children)  # type: ignore[arg-type]
        return children

    def factor(self, a: int, sizes: list[Size], why: str) -> list[int] | None:
        """Split ``a`` into outer × inner spaces of ``sizes``; None if it cannot."""
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is not None:
            if ref.kind == "factor" and len(ref.children) == len(sizes) and all(
                _eq(self.size[self.find(c)], s) for c, s in zip(ref.children, sizes)
            ):
                return list(ref.children)
            self.pin(r, f"{why}: needs a split of an axis already split another way")
            return None
        return self._refine(r, "factor", sizes)

    def partition(self, a: int, sizes: list[Size], why: str) -> list[int]:
        """Cut ``a`` into consecutive ranges of ``sizes`` (concatenation order)."""
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is None:
            return self._refine(r, "partition", sizes)
        if ref.kind == "partition" and len(ref.children) == len(sizes) and all(
            _eq(self.size[self.find(c)], s) for c, s in zip(ref.children, sizes)
        ):
            return list(ref.children)
        # A second, different cut of the same space: keep it whole.
        self.pin(r, f"{why}: axis is cut into ranges in two different ways")
        children = [self.new(s) for s in sizes]
        for c in children:
            self.pin(c, f"{why}: axis is cut into ranges in two different ways")
        return children

    def leaves(self, a: int) -> list[int]:
        """Factor leaves of ``a``, outer to inner (partitions stay whole)."""
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is None or ref.kind != "factor":
            return [r]
        out: list[int] = []
        for c in ref.children:
            out.extend(self.leaves(c))
        return out

    def unify(self, a: int, b: int, why: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if not _eq(self.size[ra], self.size[rb]):
            msg = f"{why}: sizes {self.size[ra]} and {self.size[rb]} do not match"
            self.pin(ra, msg)
            self.pin(rb, msg)
            return
        fa, fb = self.refine.pop(ra, None), self.refine.pop(rb, None)
        self.parent[rb] = ra
        for reason in self.pins.pop(rb, []):
            self.pin(ra, reason)
        self.uppers.setdefault(ra, set()).update(self.uppers.pop(rb, set()))
        if fa is None or fb is None:
            if fa or fb:
                self.refine[ra] = fa or fb  # type: ignore[assignment]
            return
        self.refine[ra] = fa
        if fa.kind == fb.kind == "partition":
            if len(fa.children) == len(fb.children) and all(
                _eq(self.size[self.find(x)], self.size[self.find(y)]) for x, y in zip(fa.children, fb.children)
            ):
                for x, y in zip(fa.children, fb.children):
                    self.unify(x, y, why)
                return
        elif fa.kind == fb.kind == "factor":
            if self.unify_seq(self.leaves(ra), [l for c in fb.children for l in self.leaves(c)], why):
                return
        self.pin(ra, f"{why}: one axis is split in two incompatible ways")

    def unify_seq(self, xs: list[int], ys: list[int], why: str) -> bool:
        """Align two mixed-radix index lists (outer to inner) of equal total size."""
        xs = [x for x in xs if not _is_one(self.size[self.find(x)])]
        ys = [y for y in ys if not _is_one(self.size[self.find(y)])]
        xs.reverse()
        ys.reverse()  # pop from the end = outermost first
        while xs and ys:
            a, b = self.find(xs[-1]), self.find(ys[-1])
            sa, sb = self.size[a], self.size[b]
            if _eq(sa, sb):
                self.unify(a, b, why)
                xs.pop(), ys.pop()
                continue
            q = _div(sa, sb)
            if q is not None and not _is_one(q):
                parts = self.factor(a, [sb, q], why)
                if parts is None:
                    break
                self.unify(parts[0], b, why)
                xs[-1] = parts[1]
                ys.pop()
                # a factor may itself be refined already: re-expand
                xs[-1:] = list(reversed(self.leaves(xs[-1])))
                continue
            q = _div(sb, sa)
            if q is not None and not _is_one(q):
                parts = self.factor(b, [sa, q], why)
                if parts is None:
                    break
                self.unify(a, parts[0], why)
                ys[-1] = parts[1]
                xs.pop()
                ys[-1:] = list(reversed(self.leaves(ys[-1])))
                continue
            break
        if xs or ys:
            for a in xs + ys:
                self.pin(a, f"{why}: reshape regroups sizes that cannot be aligned")
            return False
        return True

    def pinned(self, a: int, _seen: set[int] | None = None) -> list[str]:
        """Reasons ``a`` may not be pruned: its own pins and any of its ancestors'."""
        r = self.find(a)
        seen = _seen if _seen is not None else set()
        if r in seen:
            return []
        seen.add(r)
        out = list(self.pins.get(r, []))
        for up in self.uppers.get(r, ()):
            out.extend(self.pinned(up, seen))
        return out

    def tree_leaves(self, a: int) -> list[int]:
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is None:
            return [r]
        return [leaf for c in ref.children for leaf in self.tree_leaves(c)]

    def coords(self, a: int) -> dict[int, np.ndarray]:
        """For each leaf under ``a``: its coordinate at every flat index of ``a`` (-1: not in it)."""
        r = self.find(a)
        n = self.size[r]
        if not isinstance(n, int):
            return {}
        ref = self.refine.get(r)
        if ref is None:
            return {r: np.arange(n)}
        out: dict[int, np.ndarray] = {}
        if ref.kind == "partition":
            start = 0
            for c in ref.children:
                m = self.size[self.find(c)]
                for leaf, co in self.coords(c).items():
                    full = out.setdefault(leaf, np.full(n, -1))
                    full[start : start + m] = np.where(co >= 0, co, full[start : start + m])
                start += m
            return out
        sizes = [self.size[self.find(c)] for c in ref.children]
        inner = 1
        strides = []
        for s in reversed(sizes):
            strides.append(inner)
            inner *= s
        strides.reverse()
        idx = np.arange(n)
        for c, s, st in zip(ref.children, sizes, strides):
            sub = (idx // st) % s
            for leaf, co in self.coords(c).items():
                mapped = co[sub]
                if leaf in out:
                    out[leaf] = np.where(mapped >= 0, mapped, out[leaf])
                else:
                    out[leaf] = mapped
        return out

    def new_size(self, a: int, kept: dict[int, np.ndarray]) -> Size:
        """Size of ``a`` once the leaves in ``kept`` keep only those indices."""
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is None:
            return len(kept[r]) if r in kept else self.size[r]
        sizes = [self.new_size(c, kept) for c in ref.children]
        if ref.kind == "partition":
            return sum(sizes) if all(isinstance(s, int) for s in sizes) else sympy.Add(*sizes)
        return math.prod(sizes) if all(isinstance(s, int) for s in sizes) else sympy.Mul(*sizes)


# -- results -------------------------------------------------------------------


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
    atoms: _Atoms
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


# -- op rules --------------------------------------------------------------------

_ELEMENTWISE = {
    # unary
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid",
    "relu6", "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "neg", "exp", "log", "log1p",
    "expm1", "rsqrt", "sqrt", "abs", "sin", "cos", "erf", "reciprocal", "square", "clamp", "clamp_min",
    "clamp_max", "round", "sign", "floor", "ceil", "logical_not", "bitwise_not", "clone", "contiguous",
    "alias", "detach", "dropout", "to", "_to_copy", "type_as", "lift_fresh_copy", "zeros_like",
    "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "isnan", "isinf", "nan_to_num",
    # binary / ternary with broadcasting
    "add", "sub", "mul", "div", "rsub", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
    "__and__", "__or__", "__xor__", "bitwise_and", "bitwise_or", "bitwise_xor", "logical_and",
    "logical_or", "where", "masked_fill", "fmod", "remainder", "floor_divide", "atan2", "lerp",
    "addcmul", "addcdiv", "copysign", "hypot",
}
_VIEW_LIKE = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_PERMUTE = {"permute", "transpose", "t", "numpy_T", "swapaxes", "movedim"}
_CREATE = {
    "arange", "ones", "zeros", "full", "empty", "new_ones", "new_zeros", "new_full", "new_empty",
    "scalar_tensor", "rand", "randn", "tensor", "linspace", "eye", "empty_strided", "randint",
}
_REDUCE = {
    "mean", "sum", "amax", "amin", "var", "std", "prod", "logsumexp", "norm", "argmax", "argmin",
    "max", "min", "any", "all", "linalg_vector_norm", "var_mean", "std_mean",
}
_SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum", "cumprod", "_safe_softmax"}
_POOL = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool2d_with_indices", "upsample_nearest2d", "upsample_bilinear2d", "_adaptive_avg_pool2d",
}
_NO_OUTPUT = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async"}
_CONV = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution"}
_MATMUL = {"matmul", "mm", "bmm"}
_PARAM_VIEW_OPS = _VIEW_LIKE | _PERMUTE | {"to", "_to_copy", "alias", "clone", "contiguous", "detach", "expand", "lift_fresh_copy"}


def _opname(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    return getattr(target, "__name__", str(target))


def _val(n: Any) -> Any:
    return n.meta.get("val") if isinstance(n, torch.fx.Node) else None


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class _Walker:
    def __init__(self, program: ExportedProgram):
        self.program = program
        self.A = _Atoms()
        self.dims: dict[str, Any] = {}
        self.state_axes: dict[str, list[int]] = {}
        self.state_kind: dict[str, str] = {}
        self.roles: dict[tuple[str, int], str] = {}
        self.param_of: dict[str, str] = {}  # node name -> parameter FQN it is a pure view of
        self.node_atoms: dict[str, dict[str, Any]] = {}

    # helpers ---------------------------------------------------------------
    def fresh(self, val: Any) -> Any:
        if isinstance(val, torch.Tensor):
            return [self.A.new(_size(d)) for d in val.shape]
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
        for atom in _flatten(out):
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
                if _is_one(self.sz(atom)) or _is_one(self.sz(out[off + i])):
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
                    for atom in _flatten(dims):
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

    def rule(self, node: torch.fx.Node) -> None:  # noqa: C901 - one dispatch table
        name = _opname(node.target)
        args, kw = node.args, node.kwargs
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
        if name in _ELEMENTWISE:
            tensors = [a for a in list(args) + list(kw.values()) if isinstance(_val(a), torch.Tensor)]
            self.broadcast(node, out, tensors, why)
            return
        if name in _VIEW_LIKE:
            x = self.d(args[0])
            self.A.unify_seq([l for a in x for l in self.A.leaves(a)], [l for a in out for l in self.A.leaves(a)], why)
            return
        if name in _PERMUTE:
            x = self.d(args[0])
            nd = len(x)
            if name in ("t", "numpy_T"):
                perm = list(reversed(range(nd)))
            elif name in ("transpose", "swapaxes"):
                perm = list(range(nd))
                i, j = _norm_dim(args[1], nd), _norm_dim(args[2], nd)
                perm[i], perm[j] = perm[j], perm[i]
            elif name == "permute":
                perm = [_norm_dim(p, nd) for p in args[1]]
            else:
                self.pin_all(node, f"{why}: no coupling rule for {node.target}")
                return
            for i, p in enumerate(perm):
                self.A.unify(out[i], x[p], why)
            return
        if name == "expand" or name == "expand_as":
            x = self.d(args[0])
            off = len(out) - len(x)
            for i, a in enumerate(x):
                if _eq(self.sz(a), self.sz(out[off + i])):
                    self.A.unify(a, out[off + i], why)
            return
        if name in _CREATE:
            for atom in _flatten(out):
                self.A.pin(atom, f"{why}: created with a fixed size by {name}")
            return
        if name == "linear":
            x, w = self.d(args[0]), self.d(args[1])
            b = self.d(args[2]) if len(args) > 2 else self.d(kw.get("bias"))
            for a, o in zip(x[:-1], out[:-1]):
                self.A.unify(a, o, why)
            self.contraction(x[-1], w[1], args[1], args[0], why)
            self.A.unify(out[-1], w[0], why)
            if b:
                self.A.unify(out[-1], b[0], why)
            self.role(args[1], w[0], "out")
            self.role(args[1], w[1], "in")
            return
        if name in _MATMUL or name == "addmm" or name == "baddbmm":
            a_n, b_n = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            a, b = self.d(a_n), self.d(b_n)
            if len(a) < 2 or len(b) < 2:
                self.pin_all(node, f"{why}: 1-D matmul operand")
                return
            self.contraction(a[-1], b[-2], b_n, a_n, why)
            self.A.unify(a[-2], out[-2], why)
            self.A.unify(b[-1], out[-1], why)
            for t in (a, b):
                off = len(out) - len(t)
                for i, atom in enumerate(t[:-2]):
                    if not _is_one(self.sz(atom)) and not _is_one(self.sz(out[off + i])):
                        self.A.unify(atom, out[off + i], why)
            if name in ("addmm", "baddbmm"):
                self.broadcast(node, out, [args[0]], why)
            if len(b) == 2:
                self.role(b_n, b[-1], "out")
                self.role(b_n, b[-2], "in")
            if len(a) == 2:
                self.role(a_n, a[-2], "out")
                self.role(a_n, a[-1], "in")
            return
        if name in _CONV:
            self.conv(node, name)
            return
        if name in ("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit_functional", "_native_batch_norm_legit"):
            x = self.d(args[0])
            y = out if name == "batch_norm" else out[0]
            for a, o in zip(x, y):
                self.A.unify(a, o, why)
            for i, p in enumerate(args[1:5]):
                pd = self.d(p)
                if pd:
                    self.A.unify(pd[0], x[1], why)
                    self.role(p, pd[0], "norm" if i == 0 else "param")
            if name != "batch_norm":
                for extra in out[1:]:
                    for atom in extra:
                        self.A.pin(atom, f"{why}: batch-norm statistics output")
            return
        if name in ("layer_norm", "native_layer_norm", "rms_norm"):
            x = self.d(args[0])
            y = out if name != "native_layer_norm" else out[0]
            k = len(args[1])
            for a, o in zip(x, y):
                self.A.unify(a, o, why)
            for atom in x[len(x) - k :]:
                self.A.pin(atom, f"{why}: {name} normalises over this axis")
            params = args[2:4] if name != "rms_norm" else args[2:3]
            for p in params:
                pd = self.d(p)
                if pd:
                    for i, atom in enumerate(pd):
                        self.A.unify(atom, x[len(x) - k + i], why)
            if name == "native_layer_norm":
                for extra in out[1:]:
                    for atom in extra:
                        self.A.pin(atom, f"{why}: layer-norm statistics output")
            return
        if name == "group_norm":
            x = self.d(args[0])
            g = int(args[1])
            for a, o in zip(x, out):
                self.A.unify(a, o, why)
            parts = self.A.factor(x[1], [g, _div(self.sz(x[1]), g)], why) if g > 1 else None
            if parts is None:
                self.A.pin(x[1], f"{why}: group_norm normalises over this axis")
            else:
                self.A.pin(parts[1], f"{why}: group_norm normalises within each group")
                self.node_atoms[node.name] = {"groups": parts[0]}
            for i, p in enumerate(args[2:4]):
                pd = self.d(p)
                if pd:
                    self.A.unify(pd[0], x[1], why)
                    self.role(p, pd[0], "norm" if i == 0 else "param")
            return
        if name in _REDUCE:
            x = self.d(args[0])
            nd = len(x)
            dims = args[1] if len(args) > 1 else kw.get("dim")
            if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
                for atom in x:
                    self.A.pin(atom, f"{why}: reduced by {name}")
                return
            if isinstance(dims, int):
                dims = [dims]
            red = {_norm_dim(int(d), nd) for d in dims}
            keep = bool(args[2]) if len(args) > 2 and isinstance(args[2], bool) else bool(kw.get("keepdim", False))
            ys = out[0] if isinstance(out, list) and out and isinstance(out[0], list) else out
            j = 0
            for i, atom in enumerate(x):
                if i in red:
                    self.A.pin(atom, f"{why}: reduced by {name}")
                    if keep:
                        j += 1
                    continue
                self.A.unify(atom, ys[j], why)
                j += 1
            return
        if name in _SOFTMAX:
            x = self.d(args[0])
            dim = _norm_dim(int(args[1]), len(x))
            for i, (a, o) in enumerate(zip(x, out)):
                self.A.unify(a, o, why)
                if i == dim:
                    self.A.pin(a, f"{why}: {name} runs along this axis")
            return
        if name in ("triu", "tril"):
            x = self.d(args[0])
            for i, (a, o) in enumerate(zip(x, out)):
                self.A.unify(a, o, why)
                if i >= len(x) - 2:
                    self.A.pin(a, f"{why}: {name} depends on positions")
            return
        if name in _POOL:
            x = self.d(args[0])
            y = out[0] if name.endswith("with_indices") else out
            lead = len(x) - {"1d": 1, "2d": 2, "3d": 3}.get(name[-2:], 2)
            if "pool" not in name and "upsample" not in name:
                lead = 2
            for a, o in zip(x[:lead], y[:lead]):
                self.A.unify(a, o, why)
            for atom in y[lead:]:
                self.A.pin(atom, f"{why}: spatial size follows the input")
            if name.endswith("with_indices"):
                for a, o in zip(x[:lead], out[1][:lead]):
                    self.A.unify(a, o, why)
            return
        if name == "cat":
            tensors = [t for t in args[0] if self.d(t) is not None]
            nd = len(out)
            dim = _norm_dim(int(args[1]) if len(args) > 1 else int(kw.get("dim", 0)), nd)
            tensors = [t for t in tensors if len(self.d(t)) == nd]
            sizes = [self.sz(self.d(t)[dim]) for t in tensors]
            children = self.A.partition(out[dim], sizes, why) if len(tensors) > 1 else [out[dim]]
            for t, c in zip(tensors, children):
                td = self.d(t)
                self.A.unify(td[dim], c, why)
                for i in range(nd):
                    if i != dim and not _is_one(self.sz(td[i])):
                        self.A.unify(td[i], out[i], why)
            self.node_atoms[node.name] = {"parts": children}
            return
        if name == "stack":
            tensors = [t for t in args[0] if self.d(t) is not None]
            dim = _norm_dim(int(args[1]) if len(args) > 1 else 0, len(out))
            for t in tensors:
                td = self.d(t)
                rest = out[:dim] + out[dim + 1 :]
                for a, o in zip(td, rest):
                    self.A.unify(a, o, why)
            self.A.pin(out[dim], f"{why}: stack index")
            return
        if name in ("split", "split_with_sizes", "chunk", "unsafe_split", "unsafe_split_with_sizes", "tensor_split"):
            x = self.d(args[0])
            nd = len(x)
            dim = args[2] if len(args) > 2 else kw.get("dim", 0)
            dim = _norm_dim(int(dim), nd)
            sizes = [self.sz(o[dim]) for o in out]
            children = self.A.partition(x[dim], sizes, why) if len(out) > 1 else [x[dim]]
            for o, c in zip(out, children):
                self.A.unify(o[dim], c, why)
                for i in range(nd):
                    if i != dim:
                        self.A.unify(o[i], x[i], why)
            self.node_atoms[node.name] = {"parts": children, "dim": dim}
            return
        if name in ("slice", "narrow"):
            x = self.d(args[0])
            nd = len(x)
            dim = _norm_dim(int(args[1]) if len(args) > 1 else 0, nd)
            for i in range(nd):
                if i != dim:
                    self.A.unify(x[i], out[i], why)
            n, m = self.sz(x[dim]), self.sz(out[dim])
            if _eq(n, m):
                self.A.unify(x[dim], out[dim], why)
                return
            if name == "slice":
                start = args[2] if len(args) > 2 else kw.get("start")
                step = args[4] if len(args) > 4 else kw.get("step", 1)
            else:
                start, step = args[2], 1
            start = 0 if start is None else start
            if step != 1 or not isinstance(start, int) or not _is_static(n) or not _is_static(m):
                self.A.pin(x[dim], f"{why}: strided or symbolic slice")
                self.A.pin(out[dim], f"{why}: strided or symbolic slice")
                return
            start = max(0, min(n, start + n if start < 0 else start))
            sizes = [s for s in (start, m, n - start - m)]
            keep = [s > 0 for s in sizes]
            children = self.A.partition(x[dim], [s for s in sizes if s > 0], why)
            it = iter(children)
            parts = [next(it) if k else None for k in keep]
            self.A.unify(parts[1], out[dim], why)
            self.node_atoms[node.name] = {"parts": parts, "dim": dim}
            return
        if name in ("select", "unbind"):
            x = self.d(args[0])
            dim = _norm_dim(int(args[1]) if len(args) > 1 else 0, len(x))
            self.A.pin(x[dim], f"{why}: indexed by {name}")
            outs = out if name == "unbind" else [out]
            for o in outs:
                for a, b in zip(x[:dim] + x[dim + 1 :], o):
                    self.A.unify(a, b, why)
            return
        if name == "embedding":
            w, ids = self.d(args[0]), self.d(args[1])
            self.A.pin(w[0], f"{why}: rows looked up by index")
            for a, o in zip(ids, out[:-1]):
                self.A.unify(a, o, why)
            self.A.unify(w[1], out[-1], why)
            self.role(args[0], w[1], "param")
            return
        if name == "repeat_interleave" and len(args) > 1 and isinstance(args[1], int):
            x = self.d(args[0])
            dim = kw.get("dim", args[2] if len(args) > 2 else None)
            if dim is None:
                self.pin_all(node, f"{why}: repeat_interleave without dim")
                return
            dim = _norm_dim(int(dim), len(x))
            for i in range(len(x)):
                if i != dim:
                    self.A.unify(x[i], out[i], why)
            parts = self.A.factor(out[dim], [self.sz(x[dim]), args[1]], why)
            if parts is None:
                self.A.pin(x[dim], f"{why}: repeat_interleave axis already split")
                return
            self.A.unify(parts[0], x[dim], why)
            self.node_atoms[node.name] = {"repeats": parts[1]}
            return
        if name in ("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "reflection_pad1d", "replication_pad1d"):
            x = self.d(args[0])
            pads = list(args[1])
            padded = {len(x) - 1 - i // 2 for i, v in enumerate(pads) if v != 0}
            for i, (a, o) in enumerate(zip(x, out)):
                if i in padded:
                    self.A.pin(a, f"{why}: padded axis")
                    self.A.pin(o, f"{why}: padded axis")
                else:
                    self.A.unify(a, o, why)
            return
        if name == "scaled_dot_product_attention":
            self.sdpa(node)
            return
        if out or any(self.d(a) for a in args):
            self.pin_all(node, f"{why}: no coupling rule for {node.target}")

    def conv(self, node: torch.fx.Node, name: str) -> None:
        args, why = node.args, node.name
        x, w, out = self.d(args[0]), self.d(args[1]), self.dims[node.name]
        b = self.d(args[2]) if len(args) > 2 else self.d(node.kwargs.get("bias"))
        if name in ("convolution", "_convolution"):
            if args[6]:
                self.pin_all(node, f"{why}: transposed convolution")
                return
            groups = int(args[8])
        else:
            groups = int(args[6]) if len(args) > 6 else int(node.kwargs.get("groups", 1))
        self.A.unify(x[0], out[0], why)
        for atom in out[2:]:
            self.A.pin(atom, f"{why}: spatial size follows the input")
        cin, cout = self.sz(x[1]), self.sz(w[0])
        if groups == 1:
            self.contraction(x[1], w[1], args[1], args[0], why)
            self.A.unify(out[1], w[0], why)
            if b:
                self.A.unify(out[1], b[0], why)
        else:
            # Grouped: channels are (group, index within group) on both sides.
            xg = self.A.factor(x[1], [groups, _div(cin, groups)], why) if cin != groups else [x[1], None]
            og = self.A.factor(w[0], [groups, _div(cout, groups)], why) if cout != groups else [w[0], None]
            if xg is None or og is None:
                self.pin_all(node, f"{why}: grouped conv channels already split another way")
                return
            self.A.unify(xg[0], og[0], why)
            if xg[1] is not None:
                self.contraction(xg[1], w[1], args[1], args[0], why)
            self.A.unify(out[1], w[0], why)
            if b:
                self.A.unify(out[1], b[0], why)
            self.node_atoms[node.name] = {"groups": xg[0]}
        self.role(args[1], w[0], "out")
        if groups == 1 or self.sz(w[1]) != 1:
            self.role(args[1], w[1], "in")
        if b:
            self.role(args[2] if len(args) > 2 else node.kwargs.get("bias"), b[0], "param")

    def sdpa(self, node: torch.fx.Node) -> None:
        args, kw, why = node.args, node.kwargs, node.name
        q, k, v = (self.d(a) for a in args[:3])
        out = self.dims[node.name]
        out = out[0] if out and isinstance(out[0], list) else out
        mask = args[3] if len(args) > 3 else kw.get("attn_mask")
        gqa = bool(kw.get("enable_gqa", args[7] if len(args) > 7 else False))
        for t in (k, v):
            for a, o in zip(t[:-3], out[:-3]):
                self.A.unify(a, o, why)
        for a, o in zip(q[:-1], out[:-1]):
            self.A.unify(a, o, why)
        self.A.unify(k[-2], v[-2], why)
        self.A.unify(k[-3], v[-3], why)
        self.A.unify(q[-1], k[-1], why)
        self.A.pin(q[-1], f"{why}: attention scale depends on the head size")
        self.A.pin(k[-2], f"{why}: softmax over keys")
        self.A.unify(v[-1], out[-1], why)
        hq, hk = self.sz(q[-3]), self.sz(k[-3])
        if _eq(hq, hk):
            self.A.unify(q[-3], k[-3], why)
        elif gqa:
            parts = self.A.factor(q[-3], [hk, _div(hq, hk)], why)
            if parts is None:
                self.A.pin(q[-3], f"{why}: query heads already split another way")
            else:
                self.A.unify(parts[0], k[-3], why)
        else:
            self.A.pin(q[-3], f"{why}: head counts differ without enable_gqa")
        if self.d(mask):
            scores = q[:-1] + [k[-2]]
            md = self.d(mask)
            off = len(scores) - len(md)
            for i, a in enumerate(md):
                if not _is_one(self.sz(a)) and not _is_one(self.sz(scores[off + i])):
                    self.A.unify(a, scores[off + i], why)


def _flatten(d: Any) -> list[int]:
    if d is None:
        return []
    if isinstance(d, int):
        return [d]
    return [a for x in d for a in _flatten(x)]


def _inner_factor(A: _Atoms, atom: int, leaf: int) -> bool | None:
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
            outer_before = any(not _is_one(A.size[A.find(p)]) for p in ref.children[:i])
            return inner or (ref.kind == "factor" and outer_before)
    return None


def _unit_kind(A: _Atoms, axis_atom: int, leaf: int, coords: np.ndarray) -> UnitKind:
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
                if _is_one(size):
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
