"""Ops that partition or index one axis: cat, stack, split, slice, select, repeat_interleave."""

from __future__ import annotations

import torch.fx

from ..atoms import is_one, sizes_equal, is_static
from .base import Rule, Walker, norm_dim

__all__ = ["Cat", "Stack", "Split", "Slice", "Select", "RepeatInterleave"]


class Cat(Rule):
    """``cat``: the output axis is partitioned into the inputs' axes."""

    ops = frozenset({"cat"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, kw, out, why = node.args, node.kwargs, walk.dims[node.name], node.name
        tensors = [t for t in args[0] if walk.d(t) is not None]
        nd = len(out)
        dim = norm_dim(int(args[1]) if len(args) > 1 else int(kw.get("dim", 0)), nd)
        tensors = [t for t in tensors if len(walk.d(t)) == nd]
        sizes = [walk.sz(walk.d(t)[dim]) for t in tensors]
        children = walk.A.partition(out[dim], sizes, why) if len(tensors) > 1 else [out[dim]]
        for t, c in zip(tensors, children):
            td = walk.d(t)
            walk.A.unify(td[dim], c, why)
            for i in range(nd):
                if i != dim and not is_one(walk.sz(td[i])):
                    walk.A.unify(td[i], out[i], why)
        walk.node_atoms[node.name] = {"parts": children}


class Stack(Rule):
    """``stack``: inputs line up with the output; the new stack index is pinned."""

    ops = frozenset({"stack"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        tensors = [t for t in args[0] if walk.d(t) is not None]
        dim = norm_dim(int(args[1]) if len(args) > 1 else 0, len(out))
        for t in tensors:
            td = walk.d(t)
            rest = out[:dim] + out[dim + 1 :]
            for a, o in zip(td, rest):
                walk.A.unify(a, o, why)
        walk.A.pin(out[dim], f"{why}: stack index")


class Split(Rule):
    """Splits: the input axis is partitioned into the outputs' axes."""

    ops = frozenset({"split", "split_with_sizes", "chunk", "unsafe_split", "unsafe_split_with_sizes", "tensor_split"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, kw, out, why = node.args, node.kwargs, walk.dims[node.name], node.name
        x = walk.d(args[0])
        nd = len(x)
        dim = args[2] if len(args) > 2 else kw.get("dim", 0)
        dim = norm_dim(int(dim), nd)
        sizes = [walk.sz(o[dim]) for o in out]
        children = walk.A.partition(x[dim], sizes, why) if len(out) > 1 else [x[dim]]
        for o, c in zip(out, children):
            walk.A.unify(o[dim], c, why)
            for i in range(nd):
                if i != dim:
                    walk.A.unify(o[i], x[i], why)
        walk.node_atoms[node.name] = {"parts": children, "dim": dim}


class Slice(Rule):
    """Static unit-step slices partition the axis (before, kept, after); anything else pins it."""

    ops = frozenset({"slice", "narrow"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, kw, out, why = node.args, node.kwargs, walk.dims[node.name], node.name
        x = walk.d(args[0])
        nd = len(x)
        dim = norm_dim(int(args[1]) if len(args) > 1 else 0, nd)
        for i in range(nd):
            if i != dim:
                walk.A.unify(x[i], out[i], why)
        n, m = walk.sz(x[dim]), walk.sz(out[dim])
        if sizes_equal(n, m):
            walk.A.unify(x[dim], out[dim], why)
            return
        if name == "slice":
            start = args[2] if len(args) > 2 else kw.get("start")
            step = args[4] if len(args) > 4 else kw.get("step", 1)
        else:
            start, step = args[2], 1
        start = 0 if start is None else start
        if step != 1 or not isinstance(start, int) or not is_static(n) or not is_static(m):
            walk.A.pin(x[dim], f"{why}: strided or symbolic slice")
            walk.A.pin(out[dim], f"{why}: strided or symbolic slice")
            return
        start = max(0, min(n, start + n if start < 0 else start))
        sizes = [s for s in (start, m, n - start - m)]
        keep = [s > 0 for s in sizes]
        children = walk.A.partition(x[dim], [s for s in sizes if s > 0], why)
        it = iter(children)
        parts = [next(it) if k else None for k in keep]
        walk.A.unify(parts[1], out[dim], why)
        walk.node_atoms[node.name] = {"parts": parts, "dim": dim}


class Select(Rule):
    """``select``/``unbind``: the indexed axis is pinned, the others pass through."""

    ops = frozenset({"select", "unbind"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        dim = norm_dim(int(args[1]) if len(args) > 1 else 0, len(x))
        walk.A.pin(x[dim], f"{why}: indexed by {name}")
        outs = out if name == "unbind" else [out]
        for o in outs:
            for a, b in zip(x[:dim] + x[dim + 1 :], o):
                walk.A.unify(a, b, why)


class RepeatInterleave(Rule):
    """``repeat_interleave`` by a constant: the output axis factors into (input, repeats)."""

    ops = frozenset({"repeat_interleave"})

    def matches(self, node: torch.fx.Node, name: str) -> bool:
        return name in self.ops and len(node.args) > 1 and isinstance(node.args[1], int)

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, kw, out, why = node.args, node.kwargs, walk.dims[node.name], node.name
        x = walk.d(args[0])
        dim = kw.get("dim", args[2] if len(args) > 2 else None)
        if dim is None:
            walk.pin_all(node, f"{why}: repeat_interleave without dim")
            return
        dim = norm_dim(int(dim), len(x))
        for i in range(len(x)):
            if i != dim:
                walk.A.unify(x[i], out[i], why)
        parts = walk.A.factor(out[dim], [walk.sz(x[dim]), args[1]], why)
        if parts is None:
            walk.A.pin(x[dim], f"{why}: repeat_interleave axis already split")
            return
        walk.A.unify(parts[0], x[dim], why)
        walk.node_atoms[node.name] = {"repeats": parts[1]}
