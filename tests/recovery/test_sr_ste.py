"""SR-STE, progressive gradient flow and gradual sparsity schedules: zeros stay zero after the projection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.errors import UsageError
from sparsecc.flows.sparsify import sparsify
from sparsecc.recovery import RecoveryOptions, get_method, masks_of
from sparsecc.recovery.base import assert_zeros_kept
from sparsecc.recovery.schedules import Schedule, interpolate, sparsity_at
from sparsecc.recovery.sr_ste import ste_weight
from sparsecc.verify.verify_sparsity import VerifySparsityPass

from ._models import PATTERNS, conv_batches, conv_program, mlp_batches, mlp_program


@pytest.mark.parametrize("variant", ["sr-ste", "pgf"])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_zeros_stay_zero_after_the_final_projection(pattern, variant):
    dense = mlp_program()
    sparse = sparsify(dense, PATTERNS[pattern], fold=True).program
    opts = RecoveryOptions("sr-ste", steps=12, lr=1e-3, extra={"variant": variant, "ramp": 0.5})
    r = get_method("sr-ste")(sparse, dense, mlp_batches(), opts)
    masks = masks_of(r.program)
    assert_zeros_kept(r.program, masks)
    VerifySparsityPass()(r.program)
    for fqn, before in masks_of(sparse).items():  # the same sparsity as the one-shot program, exactly
        assert int(masks[fqn].sum()) == int(before.sum()), fqn
    assert r.details["variant"] == variant and r.details["weights_from"] == "teacher"


def test_sr_ste_from_dense_beats_magnitude_one_shot_on_the_training_loss():
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=False).program  # unfolded: mask constants updated too
    r = get_method("sr-ste")(sparse, dense, mlp_batches(), RecoveryOptions("sr-ste", steps=30, lr=1e-3))
    assert r.loss_after < 0.8 * r.loss_before
    VerifySparsityPass()(r.program)
    assert_zeros_kept(r.program, masks_of(r.program))


def test_conv_sr_ste_keeps_nm_along_input_channels():
    dense = conv_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    r = get_method("sr-ste")(sparse, dense, conv_batches(), RecoveryOptions("sr-ste", steps=5, lr=1e-3))
    VerifySparsityPass()(r.program)


def test_ste_weight_forward_is_masked_and_gradient_flows_by_the_factor():
    w = torch.tensor([1.0, -2.0, 3.0, -4.0], requires_grad=True)
    mask = torch.tensor([True, False, True, False])
    for flow in (1.0, 0.25, 0.0):
        w.grad = None
        y = ste_weight(w, mask, flow)
        assert torch.equal(y.detach(), torch.tensor([1.0, 0.0, 3.0, 0.0]))
        y.sum().backward()
        assert torch.equal(w.grad, torch.tensor([1.0, flow, 1.0, flow]))


def test_bad_options_name_the_key():
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    for extra, key in [({"variant": "nope"}, "variant"), ({"ramp": 2.0}, "ramp"), ({"mask_every": 0}, "mask_every")]:
        with pytest.raises(UsageError, match=key):
            get_method("sr-ste")(sparse, dense, mlp_batches(), RecoveryOptions("sr-ste", steps=1, extra=extra))


@settings(max_examples=80, deadline=None)
@given(target=st.floats(0.0, 1.0), initial=st.floats(0.0, 1.0), begin=st.integers(0, 50),
       length=st.integers(0, 500), kind=st.sampled_from(["cubic", "linear", "cosine"]))
def test_schedule_hits_the_target_exactly_at_the_end(target, initial, begin, length, kind):
    end = begin + length
    assert sparsity_at(end, target, end=end, begin=begin, initial=initial, kind=kind) == target
    assert sparsity_at(end + 7, target, end=end, begin=begin, initial=initial, kind=kind) == target
    assert sparsity_at(begin, target, end=end, begin=begin, initial=initial, kind=kind) == (
        target if length == 0 else initial)
    values = [sparsity_at(s, target, end=end, begin=begin, initial=initial, kind=kind) for s in range(end + 2)]
    steps = [b - a for a, b in zip(values, values[1:])]
    lo, hi = min(initial, target), max(initial, target)
    assert all(lo - 1e-12 <= v <= hi + 1e-12 for v in values)
    assert all(d >= -1e-12 for d in steps) if target >= initial else all(d <= 1e-12 for d in steps)


def test_cubic_prunes_early_and_exp_is_geometric():
    # Zhu & Gupta: half way through, the cubic schedule has pruned 7/8 of the way
    assert sparsity_at(50, 0.8, end=100) == pytest.approx(0.8 * 7 / 8)
    assert interpolate(4.0, 0.04, 50, 100, "exp") == pytest.approx(0.4)
    assert Schedule(2.0, 0.05, 10, "exp")(10) == 0.05
    with pytest.raises(UsageError, match="positive"):
        Schedule(1.0, 0.0, 10, "exp")
    with pytest.raises(UsageError, match="before it begins"):
        sparsity_at(3, 0.5, end=2, begin=5)


@pytest.mark.parametrize("method, extra", [("sr-ste", {"variant": "pgf", "mask_every": 2}),
                                           ("learned-mask", {"mask_lr": 0.1, "prior_strength": 0.5})])
def test_interrupted_and_resumed_equals_the_uninterrupted_run(tmp_path, method, extra):
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    opts = dict(steps=6, lr=1e-3, seed=3, checkpoint_every=3, extra=extra)
    whole = get_method(method)(sparse, dense, mlp_batches(), RecoveryOptions(method, **opts))

    def stop_at_step_4(line):
        if "step 4/6" in line:
            raise KeyboardInterrupt

    ck = RecoveryOptions(method, checkpoint_dir=str(tmp_path), **opts)
    with pytest.raises(KeyboardInterrupt):
        get_method(method)(sparse, dense, mlp_batches(), ck, stop_at_step_4)
    resumed = get_method(method)(sparse, dense, mlp_batches(), ck)
    assert resumed.details["resumed_from"] == 3
    assert resumed.history == whole.history
    for fqn, w in whole.program.state_dict.items():
        assert torch.equal(resumed.program.state_dict[fqn], w), fqn
