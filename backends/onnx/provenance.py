"""Which ONNX initializer holds each prunable weight, and in which layout.

The exporter renames and re-lays-out weights: a linear on 3-D input becomes a
``MatMul`` whose weight is a pre-transposed initializer named ``val_N``, and a
BatchNorm after a conv is folded into the conv's weight (same zeros, scaled
values). Names are therefore only a hint; weights are found by value:

1. exact match, as stored or transposed (2-D);
2. match up to one scale per output channel (a folded BatchNorm);
3. an initializer with the weight's own name and shape (values changed some
   other way; the record says so).

Ties (two weights with equal values) are broken by name, then by the module
scope of the consuming node, then by not reusing an initializer.
"""

from __future__ import annotations

import ast
import hashlib
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch

from sparsecc.core.analyze import PrunableWeight

from .graph_index import GraphIndex, attribute

if TYPE_CHECKING:
    import onnx

__all__ = ["find_provenance", "axis_labels", "layout_of", "consumers_of"]

_PASS_THROUGH = ("Transpose", "Cast", "Identity", "QuantizeLinear", "DequantizeLinear")


def axis_labels(w: PrunableWeight) -> list[str]:
    """Names of the weight's axes in its PyTorch layout: ``out``, ``in`` and kernel axes."""
    labels = ["k"] * len(w.shape)
    spatial = [a for a in range(len(w.shape)) if a not in (w.output_axis, w.reduction_axis)]
    names = {1: ["k"], 2: ["kh", "kw"], 3: ["kd", "kh", "kw"]}.get(len(spatial), [f"k{i}" for i in range(len(spatial))])
    for a, name in zip(spatial, names):
        labels[a] = name
    labels[w.output_axis] = "out"
    labels[w.reduction_axis] = "in/g" if w.groups > 1 else "in"
    return labels


def layout_of(w: PrunableWeight, perm: Sequence[int]) -> str:
    """``"as is [out, in]"``, ``"transposed [in, out]"`` or ``"permuted (..) [..]"``."""
    labels = axis_labels(w)
    shown = "[" + ", ".join(labels[p] for p in perm) + "]"
    if list(perm) == list(range(len(perm))):
        return f"as is {shown}"
    if len(perm) == 2:
        return f"transposed {shown}"
    return f"permuted {tuple(perm)} {shown}"


def consumers_of(index: GraphIndex, name: str) -> list[dict[str, Any]]:
    """The compute nodes that read a constant, through layout-preserving ops and transposes."""
    found: list[dict[str, Any]] = []
    stack: list[tuple[str, list[str]]] = [(name, [])]
    seen: set[str] = set()
    while stack:
        tensor, via = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node, i in index.consumers.get(tensor, []):
            if node.op_type in _PASS_THROUGH and i == 0:
                stack.append((node.output[0], via + [node.op_type]))
                continue
            entry: dict[str, Any] = {"node": node.name, "op": node.op_type, "input": i, "via": via}
            if node.op_type == "Gemm":
                entry["transB" if i == 1 else "transA"] = int(attribute(node, "transB" if i == 1 else "transA", 0))
            found.append(entry)
    return found


def _scopes(index: GraphIndex, node_name: str) -> list[str]:
    node = index.node_by_name.get(node_name)
    if node is None:
        return []
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                return [str(s) for s in ast.literal_eval(p.value)]
            except (ValueError, SyntaxError):
                return []
    return []


def _in_scope(index: GraphIndex, init: str, layer: str) -> bool:
    """Does a node reading ``init`` come from module ``layer``?"""
    for c in consumers_of(index, init):
        scopes = [s for s in _scopes(index, c["node"]) if s]
        # Scopes are module paths ('', 'layers.0', 'layers.0.q'), then the op's own name.
        modules = scopes[:-1]
        if modules and (modules[-1] == layer or ".".join(modules) == layer):
            return True
    return False


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a, dtype=np.float32).tobytes(), digest_size=16).digest()


def _layouts(ndim: int) -> list[tuple[int, ...]]:
    ident = tuple(range(ndim))
    return [ident, (1, 0)] if ndim == 2 else [ident]


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def _scaled_match(onnx_w: np.ndarray, w: np.ndarray, out_axis: int) -> bool:
    """``onnx_w == s[o] * w`` for one scale per output channel ``o`` (and the same zeros or more)."""
    if onnx_w.shape != w.shape:
        return False
    o = np.moveaxis(onnx_w.astype(np.float64), out_axis, 0).reshape(onnx_w.shape[out_axis], -1)
    x = np.moveaxis(w.astype(np.float64), out_axis, 0).reshape(w.shape[out_axis], -1)
    if np.any((x == 0) & (o != 0)):
        return False
    s = (o * x).sum(1) / np.maximum((x * x).sum(1), 1e-300)
    tol = 1e-4 * np.abs(o).max(initial=0.0) + 1e-12
    return bool(np.abs(o - s[:, None] * x).max(initial=0.0) <= tol)


class _Matcher:
    def __init__(self, index: GraphIndex):
        self.index = index
        self.by_digest: dict[tuple[tuple[int, ...], bytes], list[str]] = {}
        self.by_shape: dict[tuple[int, ...], list[str]] = {}
        for name in index.initializer_names():
            shape = index.shape(name)
            if len(shape) < 2:
                continue  # prunable weights are at least 2-D
            self.by_shape.setdefault(shape, []).append(name)
            self.by_digest.setdefault((shape, _digest(index.array(name, cache=False))), []).append(name)
        self.claimed: set[str] = set()

    def _pick(self, names: Iterable[str], w: PrunableWeight) -> str | None:
        names = list(dict.fromkeys(names))
        if not names:
            return None
        for prefer in (
            lambda n: n == w.fqn,
            lambda n: _in_scope(self.index, n, w.layer) and n not in self.claimed,
            lambda n: n not in self.claimed,
        ):
            hit = [n for n in names if prefer(n)]
            if hit:
                return hit[0]
        return names[0]

    def match(self, w: PrunableWeight, value: np.ndarray) -> tuple[str, tuple[int, ...], str] | None:
        for perm in _layouts(value.ndim):
            laid = value.transpose(perm)
            hit = self._pick(self.by_digest.get((laid.shape, _digest(laid)), []), w)
            if hit is not None:
                return hit, perm, "identical"
        for perm in _layouts(value.ndim):
            laid = value.transpose(perm)
            cands = self.by_shape.get(laid.shape, [])
            ok = [n for n in cands if _scaled_match(self.index.array(n).astype(np.float32), laid, perm.index(w.output_axis))]
            hit = self._pick(ok, w)
            if hit is not None:
                return hit, perm, "scaled per output channel (a normalization was folded in)"
        if w.fqn in self.by_shape.get(tuple(value.shape), []):
            return w.fqn, tuple(range(value.ndim)), "changed by the exporter (matched by name only)"
        return None


def find_provenance(
    model: "onnx.ModelProto", weights: Sequence[PrunableWeight], tensors: dict[str, torch.Tensor]
) -> dict[str, dict[str, Any]]:
    """For each weight (by FQN): its initializer, layout, permutation and consumers.

    ``perm`` follows numpy: ONNX axis ``i`` holds PyTorch axis ``perm[i]``.
    A weight that cannot be found gets ``initializer: None`` and a ``reason``.
    """
    index = GraphIndex(model)
    matcher = _Matcher(index)
    out: dict[str, dict[str, Any]] = {}
    for w in weights:
        entry: dict[str, Any] = {
            "layer": w.layer,
            "role": w.role,
            "torch_shape": list(w.shape),
            "output_axis": w.output_axis,
            "reduction_axis": w.reduction_axis,
            "groups": w.groups,
        }
        tensor = tensors.get(w.fqn)
        hit = matcher.match(w, _as_numpy(tensor)) if tensor is not None else None
        if hit is None:
            entry.update(initializer=None, reason="no initializer holds this weight (as stored, transposed or scaled)")
            out[w.fqn] = entry
            continue
        name, perm, values = hit
        matcher.claimed.add(name)
        entry.update(
            initializer=name,
            layout=layout_of(w, perm),
            perm=list(perm),
            onnx_shape=list(index.shape(name)),
            onnx_reduction_axis=perm.index(w.reduction_axis),
            values=values,
            consumers=consumers_of(index, name),
        )
        out[w.fqn] = entry
    return out
