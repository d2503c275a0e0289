"""Attention: heads and head dims through ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch.fx

from ..atoms import is_one, sizes_equal, exact_div
from .base import Rule, Walker

__all__ = ["ScaledDotProductAttention"]


class ScaledDotProductAttention(Rule):
    """SDPA: query/key/value heads line up (grouped-query heads factor); the head size and keys are pinned."""

    ops = frozenset({"scaled_dot_product_attention"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, kw, why = node.args, node.kwargs, node.name
        q, k, v = (walk.d(a) for a in args[:3])
        out = walk.dims[node.name]
        out = out[0] if out and isinstance(out[0], list) else out
        mask = args[3] if len(args) > 3 else kw.get("attn_mask")
        gqa = bool(kw.get("enable_gqa", args[7] if len(args) > 7 else False))
        for t in (k, v):
            for a, o in zip(t[:-3], out[:-3]):
                walk.A.unify(a, o, why)
        for a, o in zip(q[:-1], out[:-1]):
            walk.A.unify(a, o, why)
        walk.A.unify(k[-2], v[-2], why)
        walk.A.unify(k[-3], v[-3], why)
        walk.A.unify(q[-1], k[-1], why)
        walk.A.pin(q[-1], f"{why}: attention scale depends on the head size")
        walk.A.pin(k[-2], f"{why}: softmax over keys")
        walk.A.unify(v[-1], out[-1], why)
        hq, hk = walk.sz(q[-3]), walk.sz(k[-3])
        if sizes_equal(hq, hk):
            walk.A.unify(q[-3], k[-3], why)
        elif gqa:
            parts = walk.A.factor(q[-3], [hk, exact_div(hq, hk)], why)
            if parts is None:
                walk.A.pin(q[-3], f"{why}: query heads already split another way")
            else:
                walk.A.unify(parts[0], k[-3], why)
        else:
            walk.A.pin(q[-3], f"{why}: head counts differ without enable_gqa")
        if walk.d(mask):
            scores = q[:-1] + [k[-2]]
            md = walk.d(mask)
            off = len(scores) - len(md)
            for i, a in enumerate(md):
                if not is_one(walk.sz(a)) and not is_one(walk.sz(scores[off + i])):
                    walk.A.unify(a, scores[off + i], why)
