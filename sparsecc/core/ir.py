"""Sparsity IR: patterns, per-weight mask specs and typed node metadata.

A `SparsityPattern` says which zeros are allowed; a `MaskSpec` records what was
asked of one weight and what it got. Both are frozen and JSON-serialisable.

All sparsecc metadata on graph nodes lives under one key,
``node.meta["sparsecc"]``, and is read and written only through the accessors
below, so passes never poke at raw dictionaries.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx

__all__ = [
    "PatternKind",
    "SparsityPattern",
    "MaskSpec",
    "NodeInfo",
    "META_KEY",
    "get_node_info",
    "set_node_info",
    "clear_node_info",
]

PatternKind = Literal["unstructured", "nm", "block", "channel"]

META_KEY = "sparsecc"


@dataclass(frozen=True)
class SparsityPattern:
    """Which entries of a weight may be zeroed.

    - ``unstructured``: any entry.
    - ``nm``: at most ``n`` nonzeros in every group of ``m`` consecutive
      entries along the weight's reduction axis (2:4 is ``n=2, m=4``).
    - ``block``: whole ``rows x cols`` tiles of the weight viewed as
      ``[out, reduction]`` (see `sparsecc.analyze.as_matrix`).
    - ``channel``: whole output rows (filters / output features).
    """

    kind: PatternKind
    n: int | None = None
    m: int | None = None
    block: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind == "nm":
            if self.n is None or self.m is None:
                raise ValueError("an N:M pattern needs both n and m")
            if not (0 < self.n < self.m):
                raise ValueError(f"N:M needs 0 < N < M, got {self.n}:{self.m}")
        elif self.kind == "block":
            if self.block is None or len(self.block) != 2 or min(self.block) < 1:
                raise ValueError(f"a block pattern needs a positive (rows, cols), got {self.block}")
            object.__setattr__(self, "block", (int(self.block[0]), int(self.block[1])))
        elif self.kind not in ("unstructured", "channel"):
            raise ValueError(f"unknown pattern kind {self.kind!r}")
        if self.kind != "nm" and (self.n is not None or self.m is not None):
            raise ValueError(f"n and m only apply to N:M patterns, not {self.kind}")
        if self.kind != "block" and self.block is not None:
            raise ValueError(f"block only applies to block patterns, not {self.kind}")

    # -- constructors -------------------------------------------------------
    @classmethod
    def unstructured(cls) -> "SparsityPattern":
        return cls("unstructured")

    @classmethod
    def n_m(cls, n: int, m: int) -> "SparsityPattern":
        return cls("nm", n=n, m=m)

    @classmethod
    def blocks(cls, rows: int, cols: int) -> "SparsityPattern":
        return cls("block", block=(rows, cols))

    @classmethod
    def channel(cls) -> "SparsityPattern":
        return cls("channel")

    @classmethod
    def parse(cls, text: str) -> "SparsityPattern":
        """Parse ``"unstructured"``, ``"channel"``, ``"2:4"`` or ``"8x8"``."""
        t = str(text).strip().lower()
        if t in ("unstructured", "channel"):
            return cls(t)  # type: ignore[arg-type]
        if mt := re.fullmatch(r"(\d+)\s*:\s*(\d+)", t):
            return cls.n_m(int(mt[1]), int(mt[2]))
        if mt := re.fullmatch(r"(?:block\s*)?(\d+)\s*x\s*(\d+)", t):
            return cls.blocks(int(mt[1]), int(mt[2]))
        raise ValueError(
            f"unknown pattern {text!r}: use 'unstructured', 'channel', 'N:M' (e.g. '2:4') "
            "or a block 'RxC' (e.g. '8x8')"
        )

    # -- properties ----------------------------------------------------------
    @property
    def fixed_sparsity(self) -> float | None:
        """The sparsity the pattern itself implies (N:M), else None."""
        if self.kind == "nm":
            return 1.0 - self.n / self.m  # type: ignore[operator]
        return None

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.block[0]}x{self.block[1]}"  # type: ignore[index]
        return self.kind

    def to_json(self) -> str:
        return str(self)

    @classmethod
    def from_json(cls, text: str) -> "SparsityPattern":
        return cls.parse(text)


@dataclass(frozen=True)
class MaskSpec:
    """What one weight was asked to become, and what it became.

    ``fqn`` is the parameter's fully qualified name in the original module
    (``encoder.layer.0.attention.self.query.weight``). ``achieved`` is the
    fraction of zeros in the masked weight, filled in by mask computation and
    re-checked by verification.
    """

    fqn: str
    pattern: SparsityPattern
    target: float
    achieved: float | None = None
    criterion: str = "magnitude"
    layer: str = ""

    def with_achieved(self, achieved: float) -> "MaskSpec":
        return dataclasses.replace(self, achieved=float(achieved))

    def to_dict(self) -> dict[str, Any]:
        return {
            "fqn": self.fqn,
            "layer": self.layer,
            "pattern": self.pattern.to_json(),
            "target": self.target,
            "achieved": self.achieved,
            "criterion": self.criterion,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MaskSpec":
        return cls(
            fqn=d["fqn"],
            pattern=SparsityPattern.from_json(d["pattern"]),
            target=float(d["target"]),
            achieved=None if d.get("achieved") is None else float(d["achieved"]),
            criterion=d.get("criterion", "magnitude"),
            layer=d.get("layer", ""),
        )


@dataclass
class NodeInfo:
    """The sparsecc metadata of one graph node.

    On a weight placeholder, ``spec`` is its `MaskSpec` and ``mask`` names the
    lifted constant holding its mask (None once folded). On a mask
    placeholder, ``mask_of`` names the weight it masks. On the inserted
    ``mul`` node, ``apply_mask_of`` names the weight. ``pending_mask`` holds a
    mask computed but not yet inserted (it is not saved with the program).
    """

    spec: MaskSpec | None = None
    mask: str | None = None
    pending_mask: torch.Tensor | None = None
    mask_of: str | None = None
    apply_mask_of: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def get_node_info(node: torch.fx.Node) -> NodeInfo | None:
    info = node.meta.get(META_KEY)
    if info is not None and not isinstance(info, NodeInfo):
        raise TypeError(f"node {node.name}: meta[{META_KEY!r}] is {type(info).__name__}, not NodeInfo")
    return info


def set_node_info(node: torch.fx.Node, **fields: Any) -> NodeInfo:
    """Update (or create) the node's `NodeInfo` with the given fields."""
    info = get_node_info(node)
    if info is None:
        info = NodeInfo()
    else:
        info = dataclasses.replace(info, extra=dict(info.extra))
    for k, v in fields.items():
        if not hasattr(info, k):
            raise AttributeError(f"NodeInfo has no field {k!r}")
        setattr(info, k, v)
    node.meta[META_KEY] = info
    return info


def clear_node_info(node: torch.fx.Node) -> None:
    node.meta.pop(META_KEY, None)
