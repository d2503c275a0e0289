"""Weight contractions: linear, matmul, convolution, embedding lookups."""

from __future__ import annotations

import torch.fx

from ..atoms import is_one, exact_div
from .base import Rule, Walker

__all__ = ["Linear", "Matmul", "Conv", "Embedding"]

CONV = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution"}


class Linear(Rule):
    """``linear``: the input axis contracts with the weight's axis 1, the output is its axis 0."""

    ops = frozenset({"linear"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, kw, out, why = node.args, node.kwargs, walk.dims[node.name], node.name
        x, w = walk.d(args[0]), walk.d(args[1])
        b = walk.d(args[2]) if len(args) > 2 else walk.d(kw.get("bias"))
        for a, o in zip(x[:-1], out[:-1]):
            walk.A.unify(a, o, why)
        walk.contraction(x[-1], w[1], args[1], args[0], why)
        walk.A.unify(out[-1], w[0], why)
        if b:
            walk.A.unify(out[-1], b[0], why)
        walk.role(args[1], w[0], "out")
        walk.role(args[1], w[1], "in")


class Matmul(Rule):
    """Matrix products: contraction of the inner axes, batch axes broadcast."""

    ops = frozenset({"matmul", "mm", "bmm", "addmm", "baddbmm"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        a_n, b_n = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
        a, b = walk.d(a_n), walk.d(b_n)
        if len(a) < 2 or len(b) < 2:
            walk.pin_all(node, f"{why}: 1-D matmul operand")
            return
        walk.contraction(a[-1], b[-2], b_n, a_n, why)
        walk.A.unify(a[-2], out[-2], why)
        walk.A.unify(b[-1], out[-1], why)
        for t in (a, b):
            off = len(out) - len(t)
            for i, atom in enumerate(t[:-2]):
                if not is_one(walk.sz(atom)) and not is_one(walk.sz(out[off + i])):
                    walk.A.unify(atom, out[off + i], why)
        if name in ("addmm", "baddbmm"):
            walk.broadcast(node, out, [args[0]], why)
        if len(b) == 2:
            walk.role(b_n, b[-1], "out")
            walk.role(b_n, b[-2], "in")
        if len(a) == 2:
            walk.role(a_n, a[-2], "out")
            walk.role(a_n, a[-1], "in")


class Conv(Rule):
    """Convolutions, grouped ones included; transposed convolutions are rejected."""

    ops = frozenset(CONV)

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, why = node.args, node.name
        x, w, out = walk.d(args[0]), walk.d(args[1]), walk.dims[node.name]
        b = walk.d(args[2]) if len(args) > 2 else walk.d(node.kwargs.get("bias"))
        if name in ("convolution", "_convolution"):
            if args[6]:
                walk.pin_all(node, f"{why}: transposed convolution")
                return
            groups = int(args[8])
        else:
            groups = int(args[6]) if len(args) > 6 else int(node.kwargs.get("groups", 1))
        walk.A.unify(x[0], out[0], why)
        for atom in out[2:]:
            walk.A.pin(atom, f"{why}: spatial size follows the input")
        cin, cout = walk.sz(x[1]), walk.sz(w[0])
        if groups == 1:
            walk.contraction(x[1], w[1], args[1], args[0], why)
            walk.A.unify(out[1], w[0], why)
            if b:
                walk.A.unify(out[1], b[0], why)
        else:
            # Grouped: channels are (group, index within group) on both sides.
            xg = walk.A.factor(x[1], [groups, exact_div(cin, groups)], why) if cin != groups else [x[1], None]
            og = walk.A.factor(w[0], [groups, exact_div(cout, groups)], why) if cout != groups else [w[0], None]
            if xg is None or og is None:
                walk.pin_all(node, f"{why}: grouped conv channels already split another way")
                return
            walk.A.unify(xg[0], og[0], why)
            if xg[1] is not None:
                walk.contraction(xg[1], w[1], args[1], args[0], why)
            walk.A.unify(out[1], w[0], why)
            if b:
                walk.A.unify(out[1], b[0], why)
            walk.node_atoms[node.name] = {"groups": xg[0]}
        walk.role(args[1], w[0], "out")
        if groups == 1 or walk.sz(w[1]) != 1:
            walk.role(args[1], w[1], "in")
        if b:
            walk.role(args[2] if len(args) > 2 else node.kwargs.get("bias"), b[0], "param")


class Embedding(Rule):
    """``embedding``: rows are looked up by index (pinned); the embedding axis is the output's last."""

    ops = frozenset({"embedding"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        w, ids = walk.d(args[0]), walk.d(args[1])
        walk.A.pin(w[0], f"{why}: rows looked up by index")
        for a, o in zip(ids, out[:-1]):
            walk.A.unify(a, o, why)
        walk.A.unify(w[1], out[-1], why)
        walk.role(args[0], w[1], "param")
