"""Property tests for mask generation and the exact pattern checks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.core.ir import SparsityPattern
from sparsecc.plan.masks import (
    IncompatiblePatternError,
    compute_mask,
    incompatibility,
    pattern_violation,
    pruned_units,
)

# (shape, output_axis, reduction_axis): linear [out, in], conv [Cout, Cin, kh, kw], x @ W [K, N]
LAYOUTS = st.sampled_from(["linear", "conv", "matmul"])


def _shape(draw, layout, k_mult=1, out_mult=1):
    out = draw(st.integers(1, 6)) * out_mult
    k = draw(st.integers(1, 6)) * k_mult
    if layout == "linear":
        return (out, k), 0, 1
    if layout == "conv":
        return (out, k, draw(st.integers(1, 3)), draw(st.integers(1, 3))), 0, 1
    return (k, out), 1, 0


@st.composite
def weights(draw, k_mult=1, out_mult=1):
    layout = draw(LAYOUTS)
    shape, oa, ra = _shape(draw, layout, k_mult, out_mult)
    seed = draw(st.integers(0, 2**16))
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return w, oa, ra


SPARSITY = st.floats(0.0, 0.99, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(weights(), SPARSITY)
def test_unstructured_exact_sparsity_and_keeps_largest(wt, s):
    w, oa, ra = wt
    mask = compute_mask(w.abs(), SparsityPattern.unstructured(), s, oa, ra)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    assert int((~mask).sum()) == pruned_units(w.numel(), s)
    if mask.any() and (~mask).any():  # every kept entry scores at least every pruned one
        assert w.abs()[mask].min() >= w.abs()[~mask].max()
    assert pattern_violation(w * mask, SparsityPattern.unstructured(), s, oa, ra) is None


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7).flatmap(lambda n: st.tuples(st.just(n), st.integers(n + 1, 8))), st.data())
def test_nm_every_group_keeps_exactly_n_along_reduction_axis(nm, data):
    n, m = nm
    w, oa, ra = data.draw(weights(k_mult=m))
    pattern = SparsityPattern.n_m(n, m)
    mask = compute_mask(w.abs(), pattern, 0.0, oa, ra)
    groups = mask.movedim((oa, ra), (0, -1)).reshape(-1, m)
    assert torch.all(groups.sum(1) == n)
    assert pattern_violation(w * mask, pattern, 0.0, oa, ra) is None
    # the kept entries of each group are its n largest
    vals = w.abs().movedim((oa, ra), (0, -1)).reshape(-1, m)
    kept_min = torch.where(groups, vals, torch.inf).min(1).values
    pruned_max = torch.where(groups, -torch.inf, vals).max(1).values
    assert torch.all(kept_min >= pruned_max)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), SPARSITY, st.data())
def test_blocks_are_whole_and_count_exact(r, c, s, data):
    w, oa, ra = data.draw(weights(k_mult=c, out_mult=r))
    pattern = SparsityPattern.blocks(r, c)
    if incompatibility(tuple(w.shape), pattern, oa, ra):  # conv: rest = Cin*kh*kw need not divide by c
        with pytest.raises(IncompatiblePatternError):
            compute_mask(w.abs(), pattern, s, oa, ra)
        return
    mask = compute_mask(w.abs(), pattern, s, oa, ra)
    mat = mask.movedim((oa, ra), (0, -1)).reshape(w.shape[oa], -1)
    rows, cols = mat.shape
    tiles = mat.reshape(rows // r, r, cols // c, c)
    # each tile is all kept or all pruned
    assert torch.all(tiles.all(3).all(1) | ~tiles.any(3).any(1))
    assert int((~tiles.any(3).any(1)).sum()) == pruned_units(tiles.shape[0] * tiles.shape[2], s)
    assert pattern_violation(w * mask, pattern, s, oa, ra) is None


@settings(max_examples=40, deadline=None)
@given(weights(), SPARSITY)
def test_channel_prunes_whole_output_rows_lowest_l2(wt, s):
    w, oa, ra = wt
    mask = compute_mask(w.abs(), SparsityPattern.channel(), s, oa, ra)
    rows = mask.movedim(oa, 0).reshape(w.shape[oa], -1)
    assert torch.all(rows.all(1) | ~rows.any(1))
    pruned = ~rows.any(1)
    assert int(pruned.sum()) == pruned_units(w.shape[oa], s)
    norms = w.movedim(oa, 0).reshape(w.shape[oa], -1).norm(dim=1)
    if pruned.any() and (~pruned).any():
        assert norms[~pruned].min() >= norms[pruned].max()


def test_nm_runs_along_reduction_axis_not_output_axis():
    w = torch.arange(1.0, 33.0).reshape(4, 8)  # linear [out=4, in=8]
    mask = compute_mask(w, SparsityPattern.n_m(2, 4), 0.0, 0, 1)
    # along in_features, the two largest of each 4 are the last two
    assert mask[:, 2:4].all() and mask[:, 6:8].all() and not mask[:, :2].any()
    # the same mask is not 2:4 along the output axis
    assert pattern_violation(w * mask, SparsityPattern.n_m(2, 4), 0.0, 1, 0) is not None


def test_conv_nm_groups_run_over_input_channels():
    w = torch.randn(3, 8, 2, 2)
    mask = compute_mask(w.abs(), SparsityPattern.n_m(2, 4), 0.0, 0, 1)
    per_group = mask.reshape(3, 2, 4, 2, 2).sum(2)  # groups of 4 input channels at each (cout, kh, kw)
    assert torch.all(per_group == 2)


@pytest.mark.parametrize(
    "shape,pattern,why",
    [
        ((8, 6), SparsityPattern.n_m(2, 4), "K=6 is not a multiple of M=4"),
        ((6, 8), SparsityPattern.blocks(4, 4), "block 4x4 does not divide"),
        ((8, 3, 3, 3), SparsityPattern.n_m(2, 4), "K=3"),
    ],
)
def test_incompatible_shapes_are_refused(shape, pattern, why):
    assert why in incompatibility(shape, pattern, 0, 1)
    with pytest.raises(IncompatiblePatternError, match=why):
        compute_mask(torch.ones(shape), pattern, 0.5, 0, 1)


def test_violations_are_described():
    w = torch.ones(4, 8)
    assert "group 0 has 4 nonzeros" in pattern_violation(w, SparsityPattern.n_m(2, 4), 0.5, 0, 1)
    assert "0 zeros, expected at least 16" in pattern_violation(w, SparsityPattern.unstructured(), 0.5, 0, 1)
    assert "0 of 4 channels" in pattern_violation(w, SparsityPattern.channel(), 0.5, 0, 1)
    assert "2x2 blocks" in pattern_violation(w, SparsityPattern.blocks(2, 2), 0.5, 0, 1)
    assert math.isclose(pruned_units(10, 0.25), 2)  # round half to even: 2.5 -> 2
