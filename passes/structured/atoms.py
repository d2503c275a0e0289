"""Index spaces ("atoms") for the dependency analysis: a union-find with refinements and pins.

Sizes are ints or sympy expressions (a dynamic batch or sequence length); a
refinement splits one space into a *factor* (``H*D`` -> heads × head dims) or
a *partition* (a ``cat`` output -> its inputs' spans), kept on the class root.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sympy
import torch

__all__ = ["Size", "Atoms", "Refinement", "size_of", "is_static", "sizes_equal", "exact_div", "is_one"]

Size = Any  # int or sympy expression


def size_of(d: Any) -> Size:
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        return int(expr) if expr.is_number else expr
    return int(d)


def is_static(s: Size) -> bool:
    return isinstance(s, int)


def sizes_equal(a: Size, b: Size) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0


def exact_div(a: Size, b: Size) -> Size | None:
    """``a / b`` when exact, else None."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b and a % b == 0 else None
    q = sympy.simplify(sympy.sympify(a) / sympy.sympify(b))
    num, den = sympy.fraction(sympy.together(q))
    if den != 1:
        return None
    return int(q) if q.is_number else q


def is_one(s: Size) -> bool:
    return isinstance(s, int) and s == 1


@dataclass
class Refinement:
    kind: Literal["factor", "partition"]
    children: list[int]


class Atoms:
    """Union-find over index spaces, with factor / partition refinements and pins."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[Size] = []
        self.refine: dict[int, Refinement] = {}
        self.pins: dict[int, list[str]] = {}
        self.uppers: dict[int, set[int]] = {}  # atoms this one is a refinement child of

    def new(self, size: Size) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def pin(self, a: int, reason: str) -> None:
        r = self.find(a)
        reasons = self.pins.setdefault(r, [])
        if len(reasons) < 8 and reason not in reasons:
            reasons.append(reason)

    def refinement(self, a: int) -> Refinement | None:
        return self.refine.get(self.find(a))

    def _refine(self, a: int, kind: str, sizes: list[Size]) -> list[int]:
        r = self.find(a)
        children = [self.new(s) for s in sizes]
        for c in children:
            self.uppers[c] = {r}
        self.refine[r] = Refinement(kind, children)  # type: ignore[arg-type]
        return children

    def factor(self, a: int, sizes: list[Size], why: str) -> list[int] | None:
        """Split ``a`` into outer × inner spaces of ``sizes``; None if it cannot."""
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is not None:
            if ref.kind == "factor" and len(ref.children) == len(sizes) and all(
                sizes_equal(self.size[self.find(c)], s) for c, s in zip(ref.children, sizes)
            ):
                return list(ref.children)
            self.pin(r, f"{why}: needs a split of an axis already split another way")
            return None
        return self._refine(r, "factor", sizes)

    def partition(self, a: int, sizes: list[Size], why: str) -> list[int]:
        """Cut ``a`` into consecutive ranges of ``sizes`` (concatenation order)."""
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is None:
            return self._refine(r, "partition", sizes)
        if ref.kind == "partition" and len(ref.children) == len(sizes) and all(
            sizes_equal(self.size[self.find(c)], s) for c, s in zip(ref.children, sizes)
        ):
            return list(ref.children)
        # A second, different cut of the same space: keep it whole.
        self.pin(r, f"{why}: axis is cut into ranges in two different ways")
        children = [self.new(s) for s in sizes]
        for c in children:
            self.pin(c, f"{why}: axis is cut into ranges in two different ways")
        return children

    def leaves(self, a: int) -> list[int]:
        """Factor leaves of ``a``, outer to inner (partitions stay whole)."""
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is None or ref.kind != "factor":
            return [r]
        out: list[int] = []
        for c in ref.children:
            out.extend(self.leaves(c))
        return out

    def unify(self, a: int, b: int, why: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if not sizes_equal(self.size[ra], self.size[rb]):
            msg = f"{why}: sizes {self.size[ra]} and {self.size[rb]} do not match"
            self.pin(ra, msg)
            self.pin(rb, msg)
            return
        fa, fb = self.refine.pop(ra, None), self.refine.pop(rb, None)
        self.parent[rb] = ra
        for reason in self.pins.pop(rb, []):
            self.pin(ra, reason)
        self.uppers.setdefault(ra, set()).update(self.uppers.pop(rb, set()))
        if fa is None or fb is None:
            if fa or fb:
                self.refine[ra] = fa or fb  # type: ignore[assignment]
            return
        self.refine[ra] = fa
        if fa.kind == fb.kind == "partition":
            if len(fa.children) == len(fb.children) and all(
                sizes_equal(self.size[self.find(x)], self.size[self.find(y)]) for x, y in zip(fa.children, fb.children)
            ):
                for x, y in zip(fa.children, fb.children):
                    self.unify(x, y, why)
                return
        elif fa.kind == fb.kind == "factor":
            if self.unify_seq(self.leaves(ra), [l for c in fb.children for l in self.leaves(c)], why):
                return
        self.pin(ra, f"{why}: one axis is split in two incompatible ways")

    def unify_seq(self, xs: list[int], ys: list[int], why: str) -> bool:
        """Align two mixed-radix index lists (outer to inner) of equal total size."""
        xs = [x for x in xs if not is_one(self.size[self.find(x)])]
        ys = [y for y in ys if not is_one(self.size[self.find(y)])]
        xs.reverse()
        ys.reverse()  # pop from the end = outermost first
        while xs and ys:
            a, b = self.find(xs[-1]), self.find(ys[-1])
            sa, sb = self.size[a], self.size[b]
            if sizes_equal(sa, sb):
                self.unify(a, b, why)
                xs.pop(), ys.pop()
                continue
            q = exact_div(sa, sb)
            if q is not None and not is_one(q):
                parts = self.factor(a, [sb, q], why)
                if parts is None:
                    break
                self.unify(parts[0], b, why)
                xs[-1] = parts[1]
                ys.pop()
                # a factor may itself be refined already: re-expand
                xs[-1:] = list(reversed(self.leaves(xs[-1])))
                continue
            q = exact_div(sb, sa)
            if q is not None and not is_one(q):
                parts = self.factor(b, [sa, q], why)
                if parts is None:
                    break
                self.unify(a, parts[0], why)
                ys[-1] = parts[1]
                xs.pop()
                ys[-1:] = list(reversed(self.leaves(ys[-1])))
                continue
            break
        if xs or ys:
            for a in xs + ys:
                self.pin(a, f"{why}: reshape regroups sizes that cannot be aligned")
            return False
        return True

    def pinned(self, a: int, _seen: set[int] | None = None) -> list[str]:
        """Reasons ``a`` may not be pruned: its own pins and any of its ancestors'."""
        r = self.find(a)
        seen = _seen if _seen is not None else set()
        if r in seen:
            return []
        seen.add(r)
        out = list(self.pins.get(r, []))
        for up in self.uppers.get(r, ()):
            out.extend(self.pinned(up, seen))
        return out

    def tree_leaves(self, a: int) -> list[int]:
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is None:
            return [r]
        return [leaf for c in ref.children for leaf in self.tree_leaves(c)]

    def coords(self, a: int) -> dict[int, np.ndarray]:
        """For each leaf under ``a``: its coordinate at every flat index of ``a`` (-1: not in it)."""
        r = self.find(a)
        n = self.size[r]
        if not isinstance(n, int):
            return {}
        ref = self.refine.get(r)
        if ref is None:
            return {r: np.arange(n)}
        out: dict[int, np.ndarray] = {}
        if ref.kind == "partition":
            start = 0
            for c in ref.children:
                m = self.size[self.find(c)]
                for leaf, co in self.coords(c).items():
                    full = out.setdefault(leaf, np.full(n, -1))
                    full[start : start + m] = np.where(co >= 0, co, full[start : start + m])
                start += m
            return out
        sizes = [self.size[self.find(c)] for c in ref.children]
        inner = 1
        strides = []
        for s in reversed(sizes):
            strides.append(inner)
            inner *= s
        strides.reverse()
        idx = np.arange(n)
        for c, s, st in zip(ref.children, sizes, strides):
            sub = (idx // st) % s
            for leaf, co in self.coords(c).items():
                mapped = co[sub]
                if leaf in out:
                    out[leaf] = np.where(mapped >= 0, mapped, out[leaf])
                else:
                    out[leaf] = mapped
        return out

    def new_size(self, a: int, kept: dict[int, np.ndarray]) -> Size:
        """Size of ``a`` once the leaves in ``kept`` keep only those indices."""
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is None:
            return len(kept[r]) if r in kept else self.size[r]
        sizes = [self.new_size(c, kept) for c in ref.children]
        if ref.kind == "partition":
            return sum(sizes) if all(isinstance(s, int) for s in sizes) else sympy.Add(*sizes)
        return math.prod(sizes) if all(isinstance(s, int) for s in sizes) else sympy.Mul(*sizes)


# -- results -------------------------------------------------------------------
