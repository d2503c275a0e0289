"""Normalisations: per-channel parameters join the channel space; normalised axes are pinned."""

from __future__ import annotations

import torch.fx

from ..atoms import exact_div
from .base import Rule, Walker

__all__ = ["BatchNorm", "LayerNorm", "GroupNorm"]


class BatchNorm(Rule):
    """Batch norm: scale, shift and running statistics are per channel (axis 1)."""

    ops = frozenset({"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit_functional", "_native_batch_norm_legit"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        y = out if name == "batch_norm" else out[0]
        for a, o in zip(x, y):
            walk.A.unify(a, o, why)
        for i, p in enumerate(args[1:5]):
            pd = walk.d(p)
            if pd:
                walk.A.unify(pd[0], x[1], why)
                walk.role(p, pd[0], "norm" if i == 0 else "param")
        if name != "batch_norm":
            for extra in out[1:]:
                for atom in extra:
                    walk.A.pin(atom, f"{why}: batch-norm statistics output")


class LayerNorm(Rule):
    """Layer / RMS norm: the normalised trailing axes are pinned (their statistics span them)."""

    ops = frozenset({"layer_norm", "native_layer_norm", "rms_norm"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        y = out if name != "native_layer_norm" else out[0]
        k = len(args[1])
        for a, o in zip(x, y):
            walk.A.unify(a, o, why)
        for atom in x[len(x) - k :]:
            walk.A.pin(atom, f"{why}: {name} normalises over this axis")
        params = args[2:4] if name != "rms_norm" else args[2:3]
        for p in params:
            pd = walk.d(p)
            if pd:
                for i, atom in enumerate(pd):
                    walk.A.unify(atom, x[len(x) - k + i], why)
        if name == "native_layer_norm":
            for extra in out[1:]:
                for atom in extra:
                    walk.A.pin(atom, f"{why}: layer-norm statistics output")


class GroupNorm(Rule):
    """Group norm: channels factor into (group, index within group); the inner factor is pinned."""

    ops = frozenset({"group_norm"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        g = int(args[1])
        for a, o in zip(x, out):
            walk.A.unify(a, o, why)
        parts = walk.A.factor(x[1], [g, exact_div(walk.sz(x[1]), g)], why) if g > 1 else None
        if parts is None:
            walk.A.pin(x[1], f"{why}: group_norm normalises over this axis")
        else:
            walk.A.pin(parts[1], f"{why}: group_norm normalises within each group")
            walk.node_atoms[node.name] = {"groups": parts[0]}
        for i, p in enumerate(args[2:4]):
            pd = walk.d(p)
            if pd:
                walk.A.unify(pd[0], x[1], why)
                walk.role(p, pd[0], "norm" if i == 0 else "param")
