"""Ops that mix indices along some axes: reductions, softmax-like scans, pooling."""

from __future__ import annotations

import torch.fx

from .base import Rule, Walker, norm_dim

__all__ = ["Reduce", "Softmax", "Pool"]

REDUCE = {
    "mean", "sum", "amax", "amin", "var", "std", "prod", "logsumexp", "norm", "argmax", "argmin",
    "max", "min", "any", "all", "linalg_vector_norm", "var_mean", "std_mean",
}
SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum", "cumprod", "_safe_softmax"}
POOL = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool2d_with_indices", "upsample_nearest2d", "upsample_bilinear2d", "_adaptive_avg_pool2d",
}


class Reduce(Rule):
    """Reductions: reduced axes are pinned, the others pass through."""

    ops = frozenset(REDUCE)

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, kw, out, why = node.args, node.kwargs, walk.dims[node.name], node.name
        x = walk.d(args[0])
        nd = len(x)
        dims = args[1] if len(args) > 1 else kw.get("dim")
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            for atom in x:
                walk.A.pin(atom, f"{why}: reduced by {name}")
            return
        if isinstance(dims, int):
            dims = [dims]
        red = {norm_dim(int(d), nd) for d in dims}
        keep = bool(args[2]) if len(args) > 2 and isinstance(args[2], bool) else bool(kw.get("keepdim", False))
        ys = out[0] if isinstance(out, list) and out and isinstance(out[0], list) else out
        j = 0
        for i, atom in enumerate(x):
            if i in red:
                walk.A.pin(atom, f"{why}: reduced by {name}")
                if keep:
                    j += 1
                continue
            walk.A.unify(atom, ys[j], why)
            j += 1


class Softmax(Rule):
    """Softmax and cumulative scans: the scanned axis is pinned."""

    ops = frozenset(SOFTMAX)

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        dim = norm_dim(int(args[1]), len(x))
        for i, (a, o) in enumerate(zip(x, out)):
            walk.A.unify(a, o, why)
            if i == dim:
                walk.A.pin(a, f"{why}: {name} runs along this axis")


class Pool(Rule):
    """Pooling and upsampling: batch and channel pass through, spatial axes are pinned."""

    ops = frozenset(POOL)

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        y = out[0] if name.endswith("with_indices") else out
        lead = len(x) - {"1d": 1, "2d": 2, "3d": 3}.get(name[-2:], 2)
        if "pool" not in name and "upsample" not in name:
            lead = 2
        for a, o in zip(x[:lead], y[:lead]):
            walk.A.unify(a, o, why)
        for atom in y[lead:]:
            walk.A.pin(atom, f"{why}: spatial size follows the input")
        if name.endswith("with_indices"):
            for a, o in zip(x[:lead], out[1][:lead]):
                walk.A.unify(a, o, why)
