"""Ops that move axes without mixing indices: views, permutations, broadcast expands."""

from __future__ import annotations

import torch.fx

from ..atoms import sizes_equal
from .base import Rule, Walker, norm_dim

__all__ = ["ViewLike", "Permute", "Expand"]

VIEW_LIKE = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
PERMUTE = {"permute", "transpose", "t", "numpy_T", "swapaxes", "movedim"}


class ViewLike(Rule):
    """Views and reshapes: leaf spaces line up in order, factoring or merging axes."""

    ops = frozenset(VIEW_LIKE)

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        walk.A.unify_seq([l for a in x for l in walk.A.leaves(a)], [l for a in out for l in walk.A.leaves(a)], why)


class Permute(Rule):
    """Axis permutations: output axis ``i`` is input axis ``perm[i]``."""

    ops = frozenset(PERMUTE)

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        nd = len(x)
        if name in ("t", "numpy_T"):
            perm = list(reversed(range(nd)))
        elif name in ("transpose", "swapaxes"):
            perm = list(range(nd))
            i, j = norm_dim(args[1], nd), norm_dim(args[2], nd)
            perm[i], perm[j] = perm[j], perm[i]
        elif name == "permute":
            perm = [norm_dim(p, nd) for p in args[1]]
        else:
            walk.pin_all(node, f"{why}: no coupling rule for {node.target}")
            return
        for i, p in enumerate(perm):
            walk.A.unify(out[i], x[p], why)


class Expand(Rule):
    """``expand``: axes that keep their size pass through; broadcast ones are new."""

    ops = frozenset({"expand", "expand_as"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        off = len(out) - len(x)
        for i, a in enumerate(x):
            if sizes_equal(walk.sz(a), walk.sz(out[off + i])):
                walk.A.unify(a, out[off + i], why)
