"""SparseGPT against independent computations: least squares, naive OBS steps, exact patterns."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.core.ir import SparsityPattern
from sparsecc.plan.masks import pattern_violation, pruned_units
from sparsecc.plan.sparsegpt import inverse_hessian_factor, sparsegpt_prune

DAMP = 0.01


def _problem(rows: int, cols: int, n: int = 256, seed: int = 0):
    """A weight and the Hessian of correlated inputs (the case where repair matters)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols**0.5 + torch.eye(cols, dtype=torch.float64)
    x = torch.randn(n, cols, generator=g, dtype=torch.float64) @ mix
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return w, x.t() @ x, x


def _damped(h: torch.Tensor) -> torch.Tensor:
    return h + DAMP * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)


def _naive_obs(w: torch.Tensor, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Left-to-right: fix column i to its pruned value, re-solve columns > i by least squares.

    With columns < i frozen, the best change of columns > i for a change d of
    column i is ``-H[>i,>i]^-1 H[>i,i] d`` — solved directly, no Cholesky trick.
    """
    w = w.clone()
    hd = _damped(h)
    for i in range(w.shape[1]):
        d = torch.where(keep[:, i], torch.zeros_like(w[:, i]), -w[:, i])
        w[:, i] += d
        if i + 1 < w.shape[1]:
            step = torch.linalg.solve(hd[i + 1:, i + 1:], hd[i + 1:, i:i + 1]).squeeze(1)
            w[:, i + 1:] -= d[:, None] * step[None, :]
    return w


@pytest.mark.parametrize("blocksize", [4, 7, 128])
def test_update_matches_naive_obs_steps_for_a_fixed_mask(blocksize):
    w, h, _ = _problem(6, 20)
    keep = torch.rand(6, 20, generator=torch.Generator().manual_seed(1)) > 0.5
    got, got_keep = sparsegpt_prune(w, h, SparsityPattern.unstructured(), 0.5, mask=keep, blocksize=blocksize,
                                    damp=DAMP)
    assert torch.equal(got_keep, keep)
    torch.testing.assert_close(got, _naive_obs(w, h, keep) * keep, rtol=1e-8, atol=1e-8)


def test_pruning_a_prefix_of_columns_gives_the_least_squares_optimum():
    """When the pruned columns come first, every kept weight can still move: SparseGPT is the LS solution."""
    w, h, x = _problem(5, 12)
    keep = torch.ones(5, 12, dtype=torch.bool)
    keep[:, :4] = False
    got, _ = sparsegpt_prune(w, h, SparsityPattern.unstructured(), 4 / 12, mask=keep, damp=DAMP)
    hd = _damped(h)
    k = slice(4, 12)
    # minimise (v - w) H (v - w)^T over v with v[:, :4] = 0: normal equations on the kept block
    want = torch.zeros_like(w)
    want[:, k] = torch.linalg.solve(hd[k, k], (hd[k, :] @ w.t())).t()
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


def test_repair_beats_magnitude_and_wanda_on_correlated_inputs():
    w, h, x = _problem(32, 64, n=512)
    w, h, x = w.float(), h.float(), x.float()
    pattern = SparsityPattern.n_m(2, 4)

    def err(v):
        return float(((x @ (v - w).t()) ** 2).sum())

    new, keep = sparsegpt_prune(w, h, pattern, 0.5)
    from sparsecc.plan.masks import compute_mask

    mag = w * compute_mask(w.abs(), pattern, 0.5, 0, 1)
    wanda = w * compute_mask(w.abs() * torch.diagonal(h).sqrt()[None, :], pattern, 0.5, 0, 1)
    assert err(new) < 0.8 * min(err(mag), err(wanda))


@settings(max_examples=25, deadline=None)
@given(
    rows=st.sampled_from([4, 8, 12]),
    cols=st.sampled_from([8, 16, 24]),
    kind=st.sampled_from(["unstructured", "2:4", "1:4", "4:8", "4x4", "2x8"]),
    sparsity=st.floats(0.1, 0.9),
    blocksize=st.sampled_from([4, 8, 128]),
)
def test_masks_hold_the_pattern_exactly(rows, cols, kind, sparsity, blocksize):
    pattern = SparsityPattern.parse(kind)
    if pattern.kind == "block" and (rows % pattern.block[0] or cols % pattern.block[1]):
        return
    w, h, _ = _problem(rows, cols, n=64)
    new, keep = sparsegpt_prune(w.float(), h.float(), pattern, sparsity, blocksize=blocksize)
    target = pattern.fixed_sparsity if pattern.fixed_sparsity is not None else sparsity
    assert pattern_violation(new, pattern, target, 0, 1) is None
    assert not new[~keep].any()
    if pattern.kind == "unstructured":
        assert int((~keep).sum()) == pruned_units(rows * cols, sparsity)
    if pattern.kind == "block":
        r, c = pattern.block
        tiles = (~keep).reshape(rows // r, r, cols // c, c).all(3).all(1)
        assert int(tiles.sum()) == pruned_units(tiles.numel(), sparsity)


def test_dead_inputs_and_singular_hessians_are_handled():
    w, h, _ = _problem(4, 8)
    h = h.float()
    h[3, :] = 0
    h[:, 3] = 0  # a feature that never fired
    new, keep = sparsegpt_prune(w.float(), h, SparsityPattern.n_m(2, 4), 0.5)
    assert torch.isfinite(new).all()
    rank1 = torch.ones(8, 1) @ torch.ones(1, 8)
    new, _ = sparsegpt_prune(w.float(), rank1, SparsityPattern.unstructured(), 0.5)
    assert torch.isfinite(new).all()


def test_bad_shapes_are_named():
    w = torch.randn(4, 6)
    with pytest.raises(ValueError, match="does not match"):
        sparsegpt_prune(w, torch.eye(5), SparsityPattern.unstructured(), 0.5)
    with pytest.raises(ValueError, match="multiple of M=4"):
        sparsegpt_prune(w, torch.eye(6), SparsityPattern.n_m(2, 4), 0.5)
    with pytest.raises(ValueError, match="structured pruning"):
        sparsegpt_prune(w, torch.eye(6), SparsityPattern.channel(), 0.5)


def test_inverse_hessian_factor_is_computed_once_per_hessian():
    x = torch.randn(64, 12, dtype=torch.float64)
    h = x.t() @ x
    first = inverse_hessian_factor(h, 0.01)
    assert inverse_hessian_factor(h, 0.01) is first  # q, k and v share it
    assert inverse_hessian_factor(h.clone(), 0.01) is not first
    other = inverse_hessian_factor(h, 0.1)
    assert not torch.allclose(other, first)
    h.mul_(4.0)  # changed in place: a fresh factor, of the scaled matrix
    torch.testing.assert_close(inverse_hessian_factor(h, 0.01), first / 2, rtol=1e-10, atol=1e-12)
