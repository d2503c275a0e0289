"""Output parity: compare a target's outputs with the sparse PyTorch program's.

- `compare`: one input set's outputs against the reference, relative to each
  output's scale (fp32 across runtimes: ``PARITY_RTOL`` / ``PARITY_ATOL``).
- `shape_variants`: fresh inputs at the smallest allowed shape and at the
  largest allowed value of each declared dynamic dim (the others at the
  example's), from the program's range constraints.
- `save_reference` / `load_reference`: the parity inputs and the reference
  outputs stored in a bundle (``inputs/reference.npz``), so `sparsecc verify`
  can recompute parity later without the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.export import ExportedProgram

__all__ = [
    "PARITY_RTOL", "PARITY_ATOL", "INT8_RTOL", "INT8_ATOL", "INT8_RTOL_PER_LAYER", "int8_parity_tolerance",
    "LARGEST_DIM_CAP", "STORE_LIMIT_BYTES", "compare", "padding_mask", "unpadded", "flat_inputs",
    "shape_variants", "save_reference", "load_reference",
]

# Across runtimes, fp32 (DESIGN.md): 1e-4 relative to each output's largest magnitude;
# the absolute part covers outputs that are all near zero.
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-5
# Parity of a dynamic int8 artifact with the fake-quantized program. One
# layer rounds each token x to the grid s_x = (max x - min x) / 255, so an
# output moves by at most s_x/2 * sum_k |w_k| <= (max|x| / 255) * sum_k |w_k|,
# i.e. 1/255 of the largest output that token could give. Each quantized
# layer on the path adds its own such error and propagates the earlier ones;
# with L layers in a chain the bound relative to the output's scale grows as
# about L/255 (each layer's typical output is well under its bound |x| sum|w|,
# which the per-output-scale comparison absorbs). The tolerance takes 4/255
# per layer on the deepest chain, capped at 0.25 of the output's scale.
INT8_RTOL_PER_LAYER = 4.0 / 255.0
INT8_RTOL = 4.0 / 255.0
INT8_ATOL = 1e-4


def int8_parity_tolerance(depth: int) -> tuple[float, float]:
    """(rtol, atol) for an artifact whose deepest chain has ``depth`` dynamic int8 linears."""
    return min(0.25, INT8_RTOL_PER_LAYER * max(1, depth)), INT8_ATOL


# A dim without an upper bound is checked at twice the example; a bound above this
# is checked at this value (a seq bound of 1M cannot be run at compile).
LARGEST_DIM_CAP = 4096
# Reference outputs beyond this (all sets but the example together) are not stored.
STORE_LIMIT_BYTES = 64 << 20


def padding_mask(inputs: Sequence[Any]) -> torch.Tensor | None:
    """The [batch, seq] keep-mask of the first 0/1 integer input of rank 2 with a zero, else None."""
    for t in inputs:
        t = torch.as_tensor(t)
        if t.dim() == 2 and not t.is_floating_point() and t.dtype != torch.bool and t.numel():
            if int(t.min()) == 0 and int(t.max()) <= 1:
                return t != 0
    return None


def unpadded(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """``t`` [batch, seq, ...] at the positions ``keep`` marks real; ``t`` itself when it has no such axes."""
    if keep is not None and t.dim() >= 2 and tuple(t.shape[:2]) == tuple(keep.shape):
        return t[keep]
    return t


def compare(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], label: str,
            rtol: float = PARITY_RTOL, atol: float = PARITY_ATOL,
            inputs: Sequence[Any] = ()) -> dict[str, Any]:
    """One parity case: per output, ok / max abs err / error relative to the output's scale.

    With the case's ``inputs``, positions that a padding mask among them marks
    as padding are left out of outputs shaped [batch, seq, ...]: what a model
    computes for a padded query is unspecified (each runtime saturates the
    masked scores its own way, and an LM's padded logits differ by 2e-4 of
    their scale between two correct fp32 runtimes where the real ones agree
    to 6e-5), and nothing downstream reads it.
    """
    case: dict[str, Any] = {"inputs": label, "outputs": []}
    ok = len(got) == len(want)
    keep = padding_mask(inputs)
    for i, (g, w) in enumerate(zip(got, want)):
        g = torch.as_tensor(g).to(w.dtype).reshape(w.shape) if g.numel() == w.numel() else torch.as_tensor(g)
        if g.shape != w.shape:
            case["outputs"].append({"index": i, "ok": False, "reason": f"shape {list(g.shape)} != {list(w.shape)}"})
            ok = False
            continue
        if not w.is_floating_point():
            same = bool(torch.equal(g, w))
            case["outputs"].append({"index": i, "ok": same, "max_abs_err": 0.0 if same else None})
            ok &= same
            continue
        # Relative to the output's scale, not element by element: two runtimes'
        # fp32 kernels differ by rounding that scales with the activations, so
        # an element that happens to sit near zero (one logit of 49k) would fail
        # any per-element relative bound while the tensor agrees to 1e-5.
        g, w = g.double(), w.double()
        real = unpadded(w, keep)
        if real is not w:
            case["padding_excluded"] = int((~keep).sum())
        g, w = unpadded(g, keep), real
        err = (g - w).abs()
        max_err = float(err.max()) if err.numel() else 0.0
        scale = float(w.abs().max()) if w.numel() else 0.0
        this_ok = max_err <= atol + rtol * scale
        case["outputs"].append({"index": i, "ok": this_ok, "max_abs_err": max_err,
                                "rel_err": max_err / scale if scale else 0.0, "scale": scale})
        ok &= this_ok
    case["ok"] = ok
    return case


def _ordered(program: ExportedProgram, args: tuple, kwargs: dict) -> tuple[list[Any], Any]:
    """Leaves of (args, kwargs) with kwargs in the program's signature order, and their tree spec."""
    spec = program.call_spec.in_spec
    if spec is not None and kwargs:
        kwargs = {k: kwargs[k] for k in spec.child(1).context}
    return torch.utils._pytree.tree_flatten((tuple(args), dict(kwargs)))


def flat_inputs(program: ExportedProgram, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """User inputs in the order the artifacts take them (the program's flat signature)."""
    return [t for t in _ordered(program, args, kwargs or {})[0] if isinstance(t, torch.Tensor)]


def _symbolic_shapes(program: ExportedProgram) -> list[tuple]:
    """Each tensor user input's shape, ints and SymInts, in signature order."""
    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    vals = [by_name[n].meta.get("val") for n in program.graph_signature.user_inputs]
    return [tuple(v.shape) for v in vals if isinstance(v, torch.Tensor)]


def _fresh(like: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if like.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if like.is_floating_point():
        return torch.randn(shape, generator=gen).to(like.dtype)
    lo, hi = (int(like.min()), int(like.max())) if like.numel() else (0, 1)
    if (lo, hi) == (0, 1) and len(shape) >= 1 and shape[-1] > 0:
        # A 0/1 integer input is a padding mask: ones then zeros along the last
        # axis, at least one kept per row. Random holes are not an input any
        # model is run on, and fully masked rows make every runtime's output
        # there an artefact of how it saturates -inf.
        lengths = torch.randint(1, shape[-1] + 1, shape[:-1], generator=gen)
        return (torch.arange(shape[-1]) < lengths.unsqueeze(-1)).to(like.dtype)
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=like.dtype)  # token ids stay in range


def shape_variants(program: ExportedProgram, args: tuple, kwargs: dict | None,
                   names: dict[str, str] | None = None, seed: int = 0) -> list[tuple[str, tuple, dict]]:
    """(label, args, kwargs) at the smallest allowed shape and at the largest value of each dynamic dim.

    ``names`` maps torch.export's symbols (``s77``) to the user's dim names for the labels.
    """
    names = names or {}
    leaves, tree = _ordered(program, args, kwargs or {})
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    shapes = _symbolic_shapes(program)
    if len(shapes) != len(tensors):
        return []
    example: dict[str, int] = {}
    for t, shape in zip(tensors, shapes):
        for axis, d in enumerate(shape):
            if isinstance(d, torch.SymInt) and getattr(d.node.expr, "is_Symbol", False):
                example[str(d.node.expr)] = int(t.shape[axis])
    ranges = {str(k): (int(v.lower), None if not v.upper.is_finite else int(v.upper))
              for k, v in program.range_constraints.items() if str(k) in example}
    if not ranges:
        return []
    assignments = [("smallest", {s: max(lo, 1) for s, (lo, _hi) in ranges.items()})]
    for s, (lo, hi) in ranges.items():
        top = min(hi, LARGEST_DIM_CAP) if hi is not None else max(2 * example[s], lo)
        assignments.append((f"largest {names.get(s, s)}", {**example, s: max(top, lo)}))
    gen = torch.Generator().manual_seed(seed)
    out, seen = [], {tuple(example.get(s) for s in ranges)}
    for kind, values in assignments:
        key = tuple(values[s] for s in ranges)
        if key in seen:  # the example already sits there
            continue
        seen.add(key)
        new = iter([_fresh(t, _concrete(shape, values), gen) for t, shape in zip(tensors, shapes)])
        flat = [next(new) if isinstance(x, torch.Tensor) else x for x in leaves]
        a, k = torch.utils._pytree.tree_unflatten(flat, tree)
        dims = ", ".join(f"{names.get(s, s)}={values[s]}" for s in ranges)
        out.append((f"{kind} allowed shape ({dims})" if kind == "smallest" else f"{kind} allowed ({dims})", a, k))
    return out


def _concrete(shape: tuple, values: dict[str, int]) -> tuple[int, ...]:
    dims = []
    for d in shape:
        if isinstance(d, torch.SymInt):
            expr = d.node.expr
            dims.append(int(expr.xreplace({s: values[str(s)] for s in expr.free_symbols if str(s) in values})))
        else:
            dims.append(int(d))
    return tuple(dims)


def save_reference(path: Path, sets: Sequence[tuple[str, Sequence[torch.Tensor], Sequence[torch.Tensor]]]) -> list[bool]:
    """Store (label, flat inputs, reference outputs) per set in one npz; returns which sets were stored.

    The first set (the example) is always stored; the others while they fit in ``STORE_LIMIT_BYTES``.
    """
    arrays: dict[str, np.ndarray] = {}
    stored, used = [], 0
    for i, (_label, ins, outs) in enumerate(sets):
        size = sum(t.numel() * t.element_size() for t in (*ins, *outs))
        if i and used + size > STORE_LIMIT_BYTES:
            stored.append(False)
            continue
        used += size
        stored.append(True)
        arrays.update({f"set{i}.in{j}": t.detach().cpu().numpy() for j, t in enumerate(ins)})
        arrays.update({f"set{i}.out{j}": t.detach().cpu().numpy() for j, t in enumerate(outs)})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return stored


def load_reference(path: Path) -> dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """set index -> (flat inputs, reference outputs), as `save_reference` stored them."""
    found: dict[int, tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]] = {}
    with np.load(path) as z:
        for key in z.files:
            head, tail = key.split(".", 1)
            ins, outs = found.setdefault(int(head[3:]), ({}, {}))
            (ins if tail.startswith("in") else outs)[int(tail[len("in" if tail.startswith("in") else "out"):])] = \
                torch.from_numpy(z[key])
    return {i: ([ins[j] for j in sorted(ins)], [outs[j] for j in sorted(outs)]) for i, (ins, outs) in found.items()}
