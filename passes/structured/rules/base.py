"""What a coupling rule is, and the small helpers the rules share.

A rule *matches* an op (by its overload packet name, sometimes by its
arguments) and *propagates* the op's coupling into the walker's atoms: it
unifies the input and output axes that are the same index space, factors or
partitions an axis, and pins every axis it cannot prove exact to prune, each
pin with the reason (``"<node>: <why>"``) that a report shows.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import torch.fx

from ..atoms import Atoms, Size

__all__ = ["Rule", "Walker", "opname", "value_of", "norm_dim", "flatten"]


class Walker(Protocol):
    """The walker state a rule reads and writes (see `find_dependency_groups`)."""

    A: Atoms
    dims: dict[str, Any]  # node name -> atom per axis (list), or a list of such lists for tuples
    node_atoms: dict[str, dict[str, Any]]  # per-node atoms for size constants
    param_of: dict[str, str]  # node name -> parameter FQN it is a pure view of

    def d(self, n: Any) -> list[int] | None: ...
    def sz(self, a: int) -> Size: ...
    def pin_all(self, node: torch.fx.Node, reason: str) -> None: ...
    def broadcast(self, node: torch.fx.Node, out: list[int], tensors: Iterable[Any], why: str) -> None: ...
    def contraction(self, x_atom: int, w_atom: int, w_node: Any, x_node: Any, why: str) -> None: ...
    def role(self, node: Any, axis_atom: int, role: str) -> None: ...


class Rule:
    """One op family's coupling rule. Subclasses set ``ops`` and implement `propagate`."""

    ops: frozenset[str] = frozenset()

    def matches(self, node: torch.fx.Node, name: str) -> bool:
        return name in self.ops

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no propagate()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.ops)} ops)"


def opname(target: Any) -> str:
    """The overload packet name of an ATen op (``aten.add.Tensor`` -> ``add``), else the callable's name."""
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    return getattr(target, "__name__", str(target))


def value_of(n: Any) -> Any:
    """The example value of a node (``meta['val']``), None for constants."""
    return n.meta.get("val") if isinstance(n, torch.fx.Node) else None


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def flatten(d: Any) -> list[int]:
    """Every atom of a (possibly nested) dims entry."""
    if d is None:
        return []
    if isinstance(d, int):
        return [d]
    return [a for x in d for a in flatten(x)]
