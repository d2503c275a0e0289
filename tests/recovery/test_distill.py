"""Sparse distillation with fixed masks: zeros stay zero for every pattern, resume equals an
uninterrupted run, and a plan applied to the user's own module trains and compiles back."""

from __future__ import annotations

import pytest
import torch

import sparsecc.recovery.distill as distill_module
from sparsecc.errors import UsageError
from sparsecc.flows.sparsify import sparsify
from sparsecc.recovery import RecoveryOptions, get_method, masks_of
from sparsecc.recovery.base import assert_zeros_kept
from sparsecc.recovery.parametrize import apply_plan, remove_plan, weights_into_program

from ._models import MLP, PATTERNS, conv_batches, conv_program, mlp_batches, mlp_program


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_masked_weights_stay_exactly_zero_through_training(pattern, fold):
    dense = mlp_program()
    sparse = sparsify(dense, PATTERNS[pattern], fold=fold).program
    masks = masks_of(sparse)
    # a high learning rate and weight decay push hard on every entry
    opts = RecoveryOptions("distill", steps=15, lr=1e-2, loss="mse", extra={"weight_decay": 0.1})
    result = get_method("distill")(sparse, dense, mlp_batches(4), opts, None)
    assert_zeros_kept(result.program, masks)
    for fqn, m in masks.items():
        w = result.program.state_dict[fqn]
        assert bool((w[~m] == 0).all()) and bool((w[m] != sparse.state_dict[fqn][m]).any()), fqn
    assert result.loss_after < result.loss_before
    assert result.steps == 15 and len(result.history) == 15 and result.tokens == 15 * 8


def test_distillation_of_a_conv_net_keeps_its_zeros():
    dense = conv_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    result = get_method("distill")(sparse, dense, conv_batches(4),
                                   RecoveryOptions("distill", steps=10, lr=1e-3, loss="kl"), None)
    assert_zeros_kept(result.program, masks_of(sparse))
    assert result.loss_after < result.loss_before


def test_distillation_reads_image_batches_by_index_and_never_lists_them(monkeypatch):
    """Training views made when read (`ImageBatches`) are indexed, never copied into a list of floats:
    the result equals a run on the same batches made up front."""
    import numpy as np

    from sparsecc.data.calibration import ImageBatches

    pixels = np.random.default_rng(0).integers(0, 256, (8, 4, 8, 8), dtype=np.uint8)
    lazy = ImageBatches(pixels, {"mean": 0.5, "std": 0.25}, 2)
    eager = list(lazy)
    monkeypatch.setattr(ImageBatches, "__iter__", lambda self: pytest.fail("image batches were listed"))
    dense = conv_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    opts = RecoveryOptions("distill", steps=6, lr=1e-3, loss="kl")
    got = get_method("distill")(sparse, dense, lazy, opts, None)
    want = get_method("distill")(sparse, dense, eager, opts, None)
    assert got.history == want.history
    for fqn, t in want.program.state_dict.items():
        assert torch.equal(t, got.program.state_dict[fqn]), fqn


def test_distillation_of_a_structured_result():
    from sparsecc.flows.structured import prune_structured

    dense = mlp_program()
    shrunk = prune_structured(dense, {"ratio": 0.5}).program
    assert shrunk.state_dict["a.weight"].shape[0] < 64  # physically smaller: no mask to keep
    result = get_method("distill")(shrunk, dense, mlp_batches(4),
                                   RecoveryOptions("distill", steps=20, lr=1e-3, loss="mse"), None)
    assert result.loss_after < result.loss_before
    assert result.program.state_dict["a.weight"].shape == shrunk.state_dict["a.weight"].shape


# the second case: hidden-state targets and a warm-up + cosine learning rate resume exactly too
@pytest.mark.parametrize("extra", [{}, {"hidden": "auto", "lr_schedule": "cosine", "warmup": 3}])
def test_interrupted_and_resumed_distillation_equals_the_uninterrupted_run(tmp_path, monkeypatch, extra):
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    batches = mlp_batches(3)
    make = lambda d: RecoveryOptions("distill", steps=20, lr=1e-3, loss="mse", seed=3,  # noqa: E731
                                     checkpoint_dir=d, checkpoint_every=4, extra=extra)
    whole = get_method("distill")(sparse, dense, batches, make(None), None)
    real, calls = distill_module.batch_loss, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 11:  # the forward pass of step 11
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(distill_module, "batch_loss", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        get_method("distill")(sparse, dense, batches, make(str(tmp_path)), None)
    monkeypatch.setattr(distill_module, "batch_loss", real)
    lines: list[str] = []
    resumed = get_method("distill")(sparse, dense, batches, make(str(tmp_path)), lines.append)
    assert resumed.details["resumed_from"] == 8  # the last periodic checkpoint before the crash
    assert any("resumed" in line for line in lines)
    assert resumed.history == whole.history
    for fqn, t in whole.program.state_dict.items():
        assert torch.equal(t, resumed.program.state_dict[fqn]), fqn


def test_a_plan_applied_to_the_users_module_trains_in_their_loop_and_compiles_back():
    torch.manual_seed(0)
    model = MLP()
    from sparsecc.testing import export_module

    sparse = sparsify(export_module(model, (torch.randn(8, 32),)), {"pattern": "2:4"}, fold=True).program
    masks = apply_plan(model, sparse)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01)
    for (x,), _ in mlp_batches(5):  # the user's own loop
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sorted(remove_plan(model)) == ["a.weight", "b.weight", "c.weight"]
    for fqn, m in masks.items():
        assert bool((dict(model.named_parameters())[fqn][~m] == 0).all())
    program = weights_into_program(sparse, model)
    x = torch.randn(8, 32)
    torch.testing.assert_close(program.module()(x), model(x), rtol=1e-6, atol=1e-6)
    assert masks_of(program).keys() == masks.keys()


def test_apply_plan_rejects_a_module_that_does_not_match():
    sparse = sparsify(mlp_program(), {"pattern": "2:4"}, fold=True).program
    with pytest.raises(UsageError, match="no parameter 'a.weight'"):
        apply_plan(torch.nn.Sequential(torch.nn.Linear(32, 64)), sparse)


def test_teacher_outputs_past_the_budget_are_computed_on_use_and_training_is_unchanged(monkeypatch):
    """Past `TEACHER_CACHE_BYTES` the teacher's outputs are not all kept (an LM's logits over its training
    windows would not fit in memory); each is computed again when used, with the same values, so the
    distilled weights are bit for bit those of a run that kept them."""
    import sparsecc.recovery.outputs as outputs

    dense = mlp_program()
    batches = mlp_batches(6)
    kept = outputs.TeacherOutputs(dense, batches)
    lazy = outputs.TeacherOutputs(dense, batches, budget=0)
    assert kept.stored and not lazy.stored and len(lazy) == 6
    for i in (3, 0, 5, 5, -1):
        assert all(torch.equal(a, b) for a, b in zip(kept[i], lazy[i], strict=True))
    assert len(lazy._kept) == 1  # one batch's outputs at a time
    with pytest.raises(IndexError, match="batch 6 of 6"):
        lazy[6]
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    opts = RecoveryOptions("distill", steps=8, lr=1e-3)
    first = get_method("distill")(sparse, dense, batches, opts, None)
    monkeypatch.setattr(outputs, "TEACHER_CACHE_BYTES", 0)
    again = get_method("distill")(sparse, dense, batches, opts, None)
    assert first.history == again.history
    for fqn, t in first.program.state_dict.items():
        assert torch.equal(t, again.program.state_dict[fqn]), fqn
