"""The per-op coupling rules of the dependency analysis, as a table.

One module per op family; `RULES` lists them in the order they are tried (the
first rule whose `Rule.matches` accepts a node handles it). An ATen op that no
rule matches pins every axis it touches ("no coupling rule for ..."), so a new
op is never pruned through by accident. To support an op, add a `Rule` to the
family it belongs to and list it here.
"""

from __future__ import annotations

import torch.fx

from .attention import ScaledDotProductAttention
from .base import Rule, Walker, flatten, norm_dim, opname, value_of
from .cat_split import Cat, RepeatInterleave, Select, Slice, Split, Stack
from .elementwise import Create, Elementwise, Pad, Triangular
from .linear import Conv, Embedding, Linear, Matmul
from .norms import BatchNorm, GroupNorm, LayerNorm
from .reduce import Pool, Reduce, Softmax
from .reshape import PERMUTE, VIEW_LIKE, Expand, Permute, ViewLike

__all__ = ["RULES", "Rule", "Walker", "find_rule", "opname", "value_of", "norm_dim", "flatten", "VIEW_LIKE", "PERMUTE"]

RULES: tuple[Rule, ...] = (
    Elementwise(), ViewLike(), Permute(), Expand(), Create(),
    Linear(), Matmul(), Conv(),
    BatchNorm(), LayerNorm(), GroupNorm(),
    Reduce(), Softmax(), Triangular(), Pool(),
    Cat(), Stack(), Split(), Slice(), Select(), Embedding(), RepeatInterleave(), Pad(),
    ScaledDotProductAttention(),
)

_BY_OP: dict[str, tuple[Rule, ...]] = {}
for _rule in RULES:
    for _op in _rule.ops:
        _BY_OP[_op] = _BY_OP.get(_op, ()) + (_rule,)


def find_rule(node: torch.fx.Node, name: str) -> Rule | None:
    """The first rule in `RULES` that handles ``node`` (op packet name ``name``), or None."""
    return next((r for r in _BY_OP.get(name, ()) if r.matches(node, name)), None)
