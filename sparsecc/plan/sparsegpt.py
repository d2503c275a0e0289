"""SparseGPT: one-shot pruning that picks the mask and repairs the surviving weights.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot" (2023). For a weight ``W [rows, K]`` whose input has
Hessian ``H = X Xᵀ`` (``sparsecc.calibrate``), it walks the columns left to
right. Pruning column ``i`` of a row costs ``w_i² / [H⁻¹]_ii`` (the OBS
saliency) and is compensated by moving the not-yet-processed weights of the
row along ``-(w_i / [H⁻¹]_ii) · [H⁻¹]_{i, i:}``. Because every row shares the
same column order, the inverse Hessians of the shrinking column sets are the
rows of one upper Cholesky factor of ``H⁻¹``, so all rows are solved at once.

- **Lazy blocked updates**: columns are processed in blocks of ``blocksize``;
  inside a block updates stay local, and the columns right of the block get
  one matrix product per block (same result, far fewer memory passes).
- **Adaptive mask selection**: the unstructured mask of a block is chosen
  when the block starts, from the already-updated weights; N:M groups and
  block tiles are chosen when their first column is reached.
- **Dampening**: ``H += damp · mean(diag H) · I`` (raised tenfold until ``H`` is
  positive definite); input features that never fire get ``H_ii = 1``.

Counts are exact: an unstructured layer prunes ``pruned_units(numel, s)``
entries (spread over blocks by cumulative rounding), an N:M layer keeps ``n``
of every ``m``, a block layer prunes its share of tiles in every column stripe.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch.utils.weak import WeakIdKeyDictionary

from sparsecc.core.ir import SparsityPattern
from sparsecc.plan.masks import pruned_units, spread_counts

__all__ = ["sparsegpt_prune", "inverse_hessian_factor"]


# hessian -> ((damp, version), factor): q, k and v (gate and up) share one Hessian, so one factor
_FACTORS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def inverse_hessian_factor(hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of the dampened inverse Hessian, in float64 for stability.

    Computed once per Hessian tensor (and dampening): weights that read one
    activation share it.
    """
    key = (damp, hessian._version)
    cached = _FACTORS.get(hessian)
    if cached is None or cached[0] != key:
        cached = _FACTORS[hessian] = (key, _inverse_hessian_factor(hessian, damp))
    return cached[1]


def _inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    h = hessian.double().clone()
    diag = torch.diagonal(h)
    dead = diag == 0
    diag[dead] = 1.0  # a feature that never fired: no information, any value is fine
    mean = float(diag.mean())
    for attempt in range(6):
        lam = damp * (10 ** attempt) * mean
        chol, info = torch.linalg.cholesky_ex(h + lam * torch.eye(h.shape[0], dtype=h.dtype))
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(inv, upper=True)
    raise ValueError("the Hessian is not positive definite even with 1e5x dampening")


def _check(pattern: SparsityPattern, rows: int, cols: int) -> None:
    if pattern.kind == "channel":
        raise ValueError("SparseGPT does not prune whole channels: use structured pruning for that")
    if pattern.kind == "nm" and cols % pattern.m:  # type: ignore[operator]
        raise ValueError(f"K={cols} is not a multiple of M={pattern.m}")
    if pattern.kind == "block":
        r, c = pattern.block  # type: ignore[misc]
        if rows % r or cols % c:
            raise ValueError(f"block {r}x{c} does not divide the weight [{rows}, {cols}]")


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: SparsityPattern,
    sparsity: float,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight [rows, K]`` under ``pattern``; return ``(new_weight, keep_mask)``.

    ``hessian`` is ``[K, K]`` (any positive scale: only its shape and the
    relative dampening matter). Pass ``mask`` to keep a fixed mask and only
    compute the weight update. ``new_weight`` has the dtype of ``weight``.
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian {tuple(hessian.shape)} does not match weight columns K={cols}")
    _check(pattern, rows, cols)
    if pattern.kind == "block":
        c = pattern.block[1]  # type: ignore[index]
        blocksize = c * max(1, math.ceil(blocksize / c))  # a tile never straddles two blocks
    elif pattern.kind == "nm":
        blocksize = pattern.m * max(1, math.ceil(blocksize / pattern.m))  # type: ignore[operator]

    hinv = inverse_hessian_factor(hessian, damp)  # a few large factorisations: all threads
    with _one_thread():
        return _prune(weight, hinv, pattern, sparsity, blocksize, mask)


def _prune(weight, hinv, pattern, sparsity, blocksize, mask):
    rows, cols = weight.shape
    # float32 work (float64 when given float64: the tests compare against exact solves)
    dtype = torch.promote_types(weight.dtype, torch.float32)
    hinv = hinv.to(dtype)
    w = weight.detach().to(dtype).clone()
    keep = torch.ones(rows, cols, dtype=torch.bool) if mask is None else mask.clone().bool()
    fixed = mask is not None
    starts = list(range(0, cols, blocksize))
    if pattern.kind == "unstructured" and not fixed:
        block_counts = spread_counts(pruned_units(rows * cols, sparsity), [min(blocksize, cols - s) * rows for s in starts])
    if pattern.kind == "block" and not fixed:
        r, c = pattern.block  # type: ignore[misc]
        stripe_counts = spread_counts(pruned_units((rows // r) * (cols // c), sparsity), [rows // r] * (cols // c))

    for b, i1 in enumerate(starts):
        i2 = min(i1 + blocksize, cols)
        err = _solve_block(w, hinv, keep, pattern, fixed, i1, i2,
                           block_counts[b] if pattern.kind == "unstructured" and not fixed else 0,
                           stripe_counts if pattern.kind == "block" and not fixed else None)
        # Lazy update of everything right of the block, one product per block.
        if i2 < cols:
            w[:, i2:].addmm_(err, hinv[i1:i2, i2:], alpha=-1.0)
    w[~keep] = 0.0
    return w.to(weight.dtype), keep


_SUB = 32  # columns per sub-block of rank-1 updates (see _solve_block)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """SparseGPT is thousands of tiny ops (a column at a time) and a few small products:
    thread hand-offs cost more than they save, and much more on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _solve_block(w: torch.Tensor, hinv: torch.Tensor, keep: torch.Tensor, pattern: SparsityPattern, fixed: bool,
                 i1: int, i2: int, block_count: int, stripe_counts: list[int] | None) -> torch.Tensor:
    """Prune and repair columns ``[i1, i2)`` of ``w`` in place; return their scaled errors.

    The block is walked in sub-blocks of `_SUB` columns (a multiple of the N:M
    group and tile width, so a group never straddles two): inside a sub-block
    the updates are rank-1, and the rest of the block gets one product per
    sub-block. Same result as rank-1 updates over the whole block, with a
    quarter of the memory traffic.
    """
    rows = w.shape[0]
    w1 = w[:, i1:i2].clone()
    err = torch.zeros_like(w1)
    h1 = hinv[i1:i2, i1:i2]
    d = torch.diagonal(h1)
    k1 = keep[:, i1:i2]
    if block_count:  # unstructured: the block's mask, chosen from its already-updated weights
        saliency = w1.square() / d.square()
        idx = torch.topk(saliency.reshape(-1), block_count, largest=False, sorted=False).indices
        block_keep = torch.ones(saliency.numel(), dtype=torch.bool)
        block_keep[idx] = False
        k1 &= block_keep.reshape(saliency.shape)
    width = i2 - i1
    unit = pattern.m if pattern.kind == "nm" else pattern.block[1] if pattern.kind == "block" else 1  # type: ignore[index]
    sub = unit * max(1, _SUB // unit)
    for j1 in range(0, width, sub):
        j2 = min(j1 + sub, width)
        for i in range(j1, j2):
            if not fixed and pattern.kind == "nm" and i % pattern.m == 0:  # type: ignore[operator]
                m = pattern.m
                sal = w1[:, i:i + m].square() / d[i:i + m].square()
                drop = torch.topk(sal, m - pattern.n, dim=1, largest=False).indices  # type: ignore[operator]
                k1[:, i:i + m].scatter_(1, drop, False)
            if stripe_counts is not None and i % pattern.block[1] == 0:  # type: ignore[index]
                r, c = pattern.block  # type: ignore[misc]
                sal = (w1[:, i:i + c].square() / d[i:i + c].square()).reshape(rows // r, r * c).sum(1)
                n_drop = stripe_counts[(i1 + i) // c]
                if n_drop:
                    tiles = torch.topk(sal, n_drop, largest=False, sorted=False).indices
                    tile_keep = torch.ones(rows // r, dtype=torch.bool)
                    tile_keep[tiles] = False
                    k1[:, i:i + c] &= tile_keep.repeat_interleave(r)[:, None]
            col = w1[:, i]
            e = col.masked_fill(k1[:, i], 0.0) / d[i]  # the pruned part of the column, scaled
            # Compensate the columns right of i (within the sub-block); column i becomes its kept part.
            w1[:, i:j2].addr_(e, h1[i, i:j2], alpha=-1.0)
            err[:, i] = e
        if j2 < width:
            w1[:, j2:].addmm_(err[:, j1:j2], h1[j1:j2, j2:], alpha=-1.0)
    w1.masked_fill_(~k1, 0.0)
    w[:, i1:i2] = w1
    return err
