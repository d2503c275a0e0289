"""Learned N:M masks: Gumbel draws are valid N:M masks, the argmax export verifies, the prior and transfer."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.core.ir import SparsityPattern, get_node_info
from sparsecc.errors import UsageError
from sparsecc.flows.sparsify import sparsify
from sparsecc.plan.masks import check_pattern, compute_mask
from sparsecc.recovery import RecoveryOptions, get_method, masks_of
from sparsecc.recovery.base import RecoveryError, assert_zeros_kept
from sparsecc.recovery.learned_masks import (
    argmax_masks,
    candidate_masks,
    from_groups,
    prior_logits,
    sample_masks,
    to_groups,
)
from sparsecc.verify.verify_sparsity import VerifySparsityPass

from ._models import conv_batches, conv_program, mlp_batches, mlp_program


@st.composite
def nm_case(draw):
    m = draw(st.sampled_from([2, 3, 4, 8]))
    n = draw(st.integers(1, m - 1))
    conv = draw(st.booleans())
    out = draw(st.integers(1, 6))
    cin = m * draw(st.integers(1, 4))
    shape = (out, cin, draw(st.integers(1, 3)), draw(st.integers(1, 3))) if conv else (out, cin)
    tau = draw(st.floats(0.01, 10.0))
    scale = draw(st.floats(0.1, 100.0))
    seed = draw(st.integers(0, 2**16))
    return n, m, shape, tau, scale, seed


@settings(max_examples=60, deadline=None)
@given(nm_case())
def test_gumbel_draws_are_valid_nm_masks(case):
    n, m, shape, tau, scale, seed = case
    g = torch.Generator().manual_seed(seed)
    cands = candidate_masks(n, m)
    groups = math.prod(shape) // m
    logits = torch.randn(groups, cands.shape[0], generator=g) * 5
    soft = sample_masks(logits, cands, tau, scale, generator=g)
    # a soft draw mixes candidates: every entry in [0, 1], every group sums to N
    assert soft.shape == (groups, m)
    assert bool(((soft >= -1e-6) & (soft <= 1 + 1e-6)).all())
    torch.testing.assert_close(soft.sum(1), torch.full((groups,), float(n)), rtol=0, atol=1e-4)
    hard = sample_masks(logits, cands, tau, scale, hard=True, generator=g)
    assert bool(((hard == 0) | (hard == 1)).all()) and bool((hard.sum(1) == n).all())
    # back in the weight's own layout, the hard draw and the argmax obey the N:M pattern exactly
    for mask in (hard.detach() > 0.5, argmax_masks(logits, cands)):
        full = from_groups(mask, shape, 0, 1)
        assert full.shape == shape
        why, achieved = check_pattern(full.float(), SparsityPattern.n_m(n, m), 1 - n / m, 0, 1)
        assert why is None and achieved == pytest.approx(1 - n / m)


def test_candidates_are_every_distinct_mask():
    for n, m in [(1, 2), (2, 4), (1, 4), (3, 8)]:
        c = candidate_masks(n, m)
        assert c.shape == (math.comb(m, n), m)
        assert bool((c.sum(1) == n).all()) and len({tuple(r.tolist()) for r in c}) == c.shape[0]
    with pytest.raises(UsageError, match="0 < N < M"):
        candidate_masks(4, 4)


def test_groups_are_the_nm_groups_of_plan_masks():
    torch.manual_seed(0)
    w = torch.randn(8, 16, 3, 3)  # conv [out, in, kh, kw]: groups run along the input channels
    mask = compute_mask(w.abs(), SparsityPattern.n_m(2, 4), 0.5, 0, 1)
    groups = to_groups(mask, 0, 1, 4)
    assert bool((groups.sum(1) == 2).all())
    assert torch.equal(from_groups(groups, tuple(w.shape), 0, 1), mask)
    # the prior picks, per group, exactly the one-shot mask
    cands = candidate_masks(2, 4)
    assert torch.equal(argmax_masks(prior_logits(groups, cands, 3.0), cands), groups)


def _opts(steps=40, **extra):
    return RecoveryOptions("learned-mask", steps=steps, extra={"mask_lr": 0.1, **extra})


@pytest.mark.parametrize("fold", [True, False])
def test_learned_masks_export_verifies_and_lowers_the_loss(fold):
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=fold).program
    r = get_method("learned-mask")(sparse, dense, mlp_batches(), _opts(prior_strength=0.5))
    VerifySparsityPass()(r.program)  # every weight still 2:4
    masks = masks_of(r.program)
    assert_zeros_kept(r.program, masks)
    assert r.details["changed_fraction"] > 0  # a weak prior lets the masks move
    assert r.loss_after < r.loss_before
    for node in r.program.graph.nodes:
        info = get_node_info(node) if node.op == "placeholder" else None
        if info is not None and info.spec is not None:
            assert info.spec.criterion == "learned-mask" and info.spec.achieved == pytest.approx(0.5)
    # entries the one-shot mask kept hold the one-shot values, newly kept ones the dense (teacher's) values
    prior = masks_of(sparse)
    for fqn, mask in masks.items():
        want = torch.where(prior[fqn], sparse.state_dict[fqn].detach(), dense.state_dict[fqn].detach()) * mask
        torch.testing.assert_close(r.program.state_dict[fqn].detach(), want, rtol=0, atol=0)
    assert r.details["weights_from"] == "one-shot kept, teacher pruned"


def test_weights_from_the_teacher_alone():
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    r = get_method("learned-mask")(sparse, dense, mlp_batches(), _opts(steps=3, weights_from="teacher"))
    for fqn, mask in masks_of(r.program).items():
        torch.testing.assert_close(r.program.state_dict[fqn].detach(), dense.state_dict[fqn].detach() * mask,
                                   rtol=0, atol=0)
    with pytest.raises(UsageError, match="weights_from"):
        get_method("learned-mask")(sparse, dense, mlp_batches(), _opts(steps=1, weights_from="nope"))


def test_strong_prior_reproduces_the_one_shot_mask():
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    r = get_method("learned-mask")(sparse, dense, mlp_batches(), _opts(steps=20, prior_strength=1e4))
    before, after = masks_of(sparse), masks_of(r.program)
    assert sorted(before) == sorted(after)
    for fqn in before:
        assert torch.equal(before[fqn], after[fqn]), fqn
        assert torch.equal(r.program.state_dict[fqn], sparse.state_dict[fqn]), fqn  # the one-shot program itself
    assert r.details["changed_fraction"] == 0


def test_conv_masks_learned_along_input_channels():
    dense = conv_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    r = get_method("learned-mask")(sparse, dense, conv_batches(), _opts(steps=10, prior_strength=0.5))
    VerifySparsityPass()(r.program)
    assert r.details["nm_weights"] == len(masks_of(sparse))


def test_saved_logits_start_another_run(tmp_path):
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    path = tmp_path / "logits.pt"
    first = get_method("learned-mask")(sparse, dense, mlp_batches(), _opts(prior_strength=0.5, save_logits=str(path)))
    assert path.is_file() and first.details["changed_fraction"] > 0
    # zero steps from the saved logits: the exported masks are the first run's
    again = get_method("learned-mask")(sparse, dense, mlp_batches(seed=7), _opts(steps=0, init_logits=str(path)))
    for fqn, mask in masks_of(first.program).items():
        assert torch.equal(masks_of(again.program)[fqn], mask), fqn
    assert str(path) in again.details["init"]


def test_wrong_logits_and_programs_without_nm_fail_clearly(tmp_path):
    from sparsecc.recovery.learned_masks import save_logits

    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    bad = tmp_path / "bad.pt"
    save_logits(bad, {"b.weight": torch.zeros(3, 6)}, {"b.weight": (2, 4)})
    with pytest.raises(UsageError, match=r"b\.weight.*shape \(3, 6\)"):
        get_method("learned-mask")(sparse, dense, mlp_batches(), _opts(init_logits=str(bad)))
    unstructured = sparsify(dense, {"pattern": "unstructured", "sparsity": 0.5}, fold=True).program
    with pytest.raises(RecoveryError, match="no N:M weight"):
        get_method("learned-mask")(unstructured, dense, mlp_batches(), _opts())
    with pytest.raises(UsageError, match="'tau'"):
        get_method("learned-mask")(sparse, dense, mlp_batches(), _opts(tau=[1.0, 0.0]))
