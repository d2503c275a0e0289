"""Masks from scores, for every pattern, and exact checks that a weight obeys one.

A mask is a boolean tensor of the weight's shape: True keeps the entry. All
functions work on the weight's own layout and take its ``output_axis`` and
``reduction_axis`` (see `sparsecc.analyze`). Internally a weight is viewed as
``[out, ..., reduction]`` (`as_matrix`):

- N:M groups are ``m`` consecutive entries of the last (reduction) axis;
- blocks tile the 2-D view ``[out, rest]`` (rest = the other axes, reduction
  innermost), so for a linear ``[out, in]`` a block is an ``r x c`` tile of the
  weight itself, and for a 1x1 conv it is a tile of ``[Cout, Cin]``;
- channels are whole rows of that view (a filter / an output feature).

Group scores for blocks and channels are the sum of the element scores
squared: for magnitude scores that is the L2 norm squared.
"""

from __future__ import annotations

import math

import torch

from sparsecc.core.analyze import as_matrix
from sparsecc.core.ir import SparsityPattern
from sparsecc.errors import UsageError

__all__ = [
    "IncompatiblePatternError",
    "rows_view",
    "from_rows_view",
    "incompatibility",
    "compute_mask",
    "pruned_units",
    "spread_counts",
    "pattern_violation",
    "check_pattern",
    "sparsity_of",
    "apply_mask",
]


class IncompatiblePatternError(UsageError, ValueError):
    pass


def _from_matrix(view: torch.Tensor, output_axis: int, reduction_axis: int) -> torch.Tensor:
    return view.movedim((0, -1), (output_axis, reduction_axis))


def rows_view(t: torch.Tensor, output_axis: int, reduction_axis: int) -> torch.Tensor:
    """The weight as ``[out, K]``: `as_matrix` flattened, reduction axis innermost.

    Calibration statistics (`sparsecc.calibrate`) index the columns of this view.
    """
    v = as_matrix(t, output_axis, reduction_axis)
    return v.reshape(v.shape[0], -1)


def from_rows_view(mat: torch.Tensor, shape: tuple[int, ...], output_axis: int, reduction_axis: int) -> torch.Tensor:
    """Inverse of `rows_view`: a ``[out, K]`` matrix back in the weight's own layout."""
    view_shape = as_matrix(torch.empty(shape, device="meta"), output_axis, reduction_axis).shape
    return _from_matrix(mat.reshape(view_shape), output_axis, reduction_axis).contiguous()


def incompatibility(
    shape: tuple[int, ...], pattern: SparsityPattern, output_axis: int, reduction_axis: int
) -> str | None:
    """Why ``pattern`` cannot be applied to a weight of ``shape``, or None."""
    if pattern.kind == "nm":
        k = shape[reduction_axis]
        if k % pattern.m:  # type: ignore[operator]
            return f"reduction size K={k} is not a multiple of M={pattern.m}"
    elif pattern.kind == "block":
        rows = shape[output_axis]
        cols = math.prod(shape) // rows
        r, c = pattern.block  # type: ignore[misc]
        if rows % r or cols % c:
            return f"block {r}x{c} does not divide the weight viewed as [{rows}, {cols}]"
    return None


def pruned_units(numel_units: int, sparsity: float) -> int:
    """How many units (entries, blocks, channels) to prune for ``sparsity``."""
    return min(numel_units, int(round(numel_units * sparsity)))


def spread_counts(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` pruned units over parts of ``sizes`` in proportion, summing exactly.

    Part ``i`` gets ``round(total * end_i / N) - round(total * start_i / N)``
    (cumulative rounding), so no part exceeds its size and the sum is ``total``.
    """
    n = sum(sizes)
    out, start = [], 0
    for size in sizes:
        end = start + size
        out.append(round(total * end / n) - round(total * start / n) if n else 0)
        start = end
    return out


def _prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean keep-mask over a flat score vector that drops the ``count`` lowest."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        idx = torch.topk(scores.reshape(-1), count, largest=False, sorted=False).indices
        keep[idx] = False
    return keep.reshape(scores.shape)


def compute_mask(
    scores: torch.Tensor,
    pattern: SparsityPattern,
    sparsity: float,
    output_axis: int,
    reduction_axis: int,
    *,
    row_wise: bool = False,
) -> torch.Tensor:
    """Keep-mask that prunes the lowest-scoring entries/groups under ``pattern``.

    ``sparsity`` is ignored for N:M, whose sparsity is ``1 - n/m``. With
    ``row_wise`` an unstructured mask compares scores within each output row
    (Wanda's rule) and every row loses its share; the per-row counts are
    rounded cumulatively so the layer still prunes exactly
    ``pruned_units(numel, sparsity)`` entries. Raises
    `IncompatiblePatternError` when the pattern does not fit the shape.
    """
    why = incompatibility(tuple(scores.shape), pattern, output_axis, reduction_axis)
    if why:
        raise IncompatiblePatternError(why)
    scores = scores.detach().float()
    if pattern.kind == "unstructured" and row_wise:
        mat = rows_view(scores, output_axis, reduction_axis)
        counts = spread_counts(pruned_units(mat.numel(), sparsity), [mat.shape[1]] * mat.shape[0])
        ranks_kept = torch.arange(mat.shape[1])[None, :] >= torch.tensor(counts)[:, None]
        keep = torch.empty_like(ranks_kept).scatter_(1, mat.argsort(dim=1), ranks_kept)
        return from_rows_view(keep, tuple(scores.shape), output_axis, reduction_axis)
    if pattern.kind == "unstructured":
        return _prune_lowest(scores, pruned_units(scores.numel(), sparsity))

    view = as_matrix(scores, output_axis, reduction_axis)
    if pattern.kind == "nm":
        n, m = pattern.n, pattern.m
        keep = _top_n_of_m(view.reshape(-1, m), n)
        return _from_matrix(keep.reshape(view.shape), output_axis, reduction_axis).contiguous()

    mat = view.reshape(view.shape[0], -1)
    rows, cols = mat.shape
    if pattern.kind == "channel":
        keep_rows = _prune_lowest(mat.square().sum(1), pruned_units(rows, sparsity))
        keep = keep_rows[:, None].expand(rows, cols)
    else:  # block
        r, c = pattern.block  # type: ignore[misc]
        tiles = mat.reshape(rows // r, r, cols // c, c).square().sum((1, 3))
        keep_tiles = _prune_lowest(tiles, pruned_units(tiles.numel(), sparsity))
        keep = keep_tiles[:, None, :, None].expand(rows // r, r, cols // c, c).reshape(rows, cols)
    return _from_matrix(keep.reshape(view.shape), output_axis, reduction_axis).contiguous()


def _top_n_of_m(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Keep-mask of the ``n`` highest scores in each row of ``groups [G, m]`` (ties: the earlier entry).

    For m <= 8 each entry's rank is counted from the m(m-1)/2 pairwise
    comparisons of whole columns: a few sweeps over the scores, where `topk`
    over millions of rows of 4 is several times slower.
    """
    m = groups.shape[1]
    if m > 8:
        keep = torch.zeros_like(groups, dtype=torch.bool)
        return keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    beaten = torch.zeros(groups.shape, dtype=torch.uint8)  # entries of the group that beat this one
    for i in range(m):
        for j in range(i + 1, m):
            i_wins = groups[:, i] >= groups[:, j]
            beaten[:, j] += i_wins
            beaten[:, i] += ~i_wins
    return beaten < n


_WORD = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def apply_mask(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``weight.masked_fill(~keep, 0)``, bit for bit, as an AND of the weight's bits with 0 or all ones.

    `masked_fill` is not vectorised on CPU: the AND is about ten times faster,
    which matters when every weight of a large model is masked several times.
    """
    word = _WORD.get(weight.element_size())
    if word is None or not weight.is_floating_point() or keep.shape != weight.shape:
        return weight.masked_fill(~keep.bool(), 0)
    bits = keep.to(word).neg_()  # True -> -1: every bit set
    return (weight.contiguous().view(word) & bits).view(weight.dtype)


def _group_counts(nz: torch.Tensor, m: int) -> torch.Tensor:
    """Nonzeros in each group of ``m`` along the last axis of a boolean tensor.

    For m in (2, 4, 8) each group's bytes are read as one integer and their
    0/1 bytes summed by a multiply (a byte-wise popcount): two orders of
    magnitude faster than a reduction over a tiny axis. The multiply may wrap;
    the top byte still holds the sum, and ``& 0xFF`` undoes the sign of the shift.
    """
    if m not in _WORD:
        return nz.reshape(-1, m).sum(1)
    word = nz.contiguous().view(torch.uint8).reshape(-1).view(_WORD[m])
    ones = int.from_bytes(b"\x01" * m, "little")
    shift = 8 * (m - 1)
    return ((word * ones) >> shift) & 0xFF


def sparsity_of(weight: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    return 1.0 - int(torch.count_nonzero(weight)) / max(1, weight.numel())


def pattern_violation(
    weight: torch.Tensor,
    pattern: SparsityPattern,
    target: float,
    output_axis: int,
    reduction_axis: int,
) -> str | None:
    """Describe the first way ``weight`` breaks ``pattern`` at ``target``, or None.

    N:M is checked group by group (at most ``n`` nonzeros). Unstructured,
    block and channel require at least as many all-zero units as a mask at
    ``target`` prunes; extra zeros are always allowed.
    """
    return check_pattern(weight, pattern, target, output_axis, reduction_axis)[0]


def check_pattern(
    weight: torch.Tensor,
    pattern: SparsityPattern,
    target: float,
    output_axis: int,
    reduction_axis: int,
) -> tuple[str | None, float]:
    """`pattern_violation` and the achieved sparsity, from one pass over the weight."""
    nz = weight != 0
    achieved = 1.0 - int(torch.count_nonzero(nz)) / max(1, nz.numel())
    return _violation(nz, pattern, target, output_axis, reduction_axis), achieved


def _violation(
    nz: torch.Tensor, pattern: SparsityPattern, target: float, output_axis: int, reduction_axis: int
) -> str | None:
    why = incompatibility(tuple(nz.shape), pattern, output_axis, reduction_axis)
    if why:
        return why
    if pattern.kind == "unstructured":
        need = pruned_units(nz.numel(), target)
        zeros = nz.numel() - int(torch.count_nonzero(nz))
        return None if zeros >= need else f"{zeros} zeros, expected at least {need}"
    view = as_matrix(nz, output_axis, reduction_axis)
    if pattern.kind == "nm":
        counts = _group_counts(view, pattern.m)
        bad = torch.nonzero(counts > pattern.n)
        if bad.numel():
            g = int(bad[0])
            return (
                f"{bad.numel()} of {counts.numel()} groups of {pattern.m} break {pattern}: "
                f"group {g} has {int(counts[g])} nonzeros"
            )
        return None
    mat = view.reshape(view.shape[0], -1)
    rows, cols = mat.shape
    if pattern.kind == "channel":
        zero_units, total, unit = int((~mat.any(1)).sum()), rows, "channels"
    else:
        r, c = pattern.block  # type: ignore[misc]
        tiles = mat.reshape(rows // r, r, cols // c, c).any(3).any(1)
        zero_units, total, unit = int((~tiles).sum()), tiles.numel(), f"{r}x{c} blocks"
    need = pruned_units(total, target)
    if zero_units < need:
        return f"{zero_units} of {total} {unit} are all zero, expected at least {need}"
    return None
