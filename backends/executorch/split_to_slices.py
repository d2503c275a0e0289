"""Rewrite ``split`` / ``split_with_sizes`` / ``chunk`` into one ``slice`` per piece.

ExecuTorch 1.5.1's edge verifier mis-reads ops that return a list of tensors
(``split_with_sizes_copy``): it takes ``len()`` of the first piece, which
guards on that piece's leading dim, and so pins a dynamic batch to the
example's size, in the lowered program and in the shape env the program
shares. A fused QKV projection (``qkv(x).split(d, -1)``) is enough to lose a
dynamic batch. Slicing is the same computation and returns one tensor, so
rewriting splits along static dims keeps every dynamic dim dynamic.
"""

from __future__ import annotations

import operator

import torch
from torch.export import ExportedProgram

__all__ = ["split_to_slices", "SPLIT_OPS"]

aten = torch.ops.aten
SPLIT_OPS = (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)


def _dim(node: torch.fx.Node) -> int:
    if len(node.args) > 2:
        return int(node.args[2])
    return int(node.kwargs.get("dim", 0))


def split_to_slices(program: ExportedProgram) -> int:
    """Rewrite ``program``'s splits along static dims in place; return how many.

    Only for a private copy. A split whose pieces are used other than by
    indexing, or whose split dim is dynamic, is left alone.
    """
    graph = program.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in SPLIT_OPS:
            continue
        src, pieces = node.args[0], node.meta.get("val")
        if not isinstance(src, torch.fx.Node) or not isinstance(pieces, (list, tuple)):
            continue
        dim = _dim(node) % src.meta["val"].dim()
        sizes = [p.shape[dim] for p in pieces]
        if any(isinstance(s, torch.SymInt) for s in sizes):
            continue
        users = list(node.users)
        if not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in users):
            continue
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for user in users:
            i = user.args[1]
            with graph.inserting_before(user):
                piece = graph.call_function(aten.slice.Tensor, (src, dim, starts[i], starts[i] + sizes[i]))
            piece.meta = dict(user.meta)
            for key in ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node"):
                if key in node.meta:
                    piece.meta[key] = node.meta[key]
            user.replace_all_uses_with(piece)
            graph.erase_node(user)
        graph.erase_node(node)
        rewritten += 1
    if rewritten:
        graph.lint()
        program.graph_module.recompile()
    return rewritten
