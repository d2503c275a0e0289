"""The recovery interface: registry, options, masks, zero checks, checkpoints and TrainingLoop resume."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from sparsecc.errors import UsageError, VerificationError
from sparsecc.flows.sparsify import sparsify
from sparsecc.recovery import RecoveryOptions, available_methods, get_method, masks_of
from sparsecc.recovery.base import (
    RecoveryError,
    TrainingLoop,
    assert_zeros_kept,
    batch_tokens,
    batch_unit,
    load_checkpoint,
    program_with_weights,
    save_checkpoint,
)

from ._models import mlp_program


def test_builtin_methods_are_registered_and_unknown_names_fail():
    assert {"reconstruct", "distill"} <= set(available_methods())
    with pytest.raises(UsageError, match="unknown recovery method 'nope'.*distill.*reconstruct"):
        get_method("nope")


def test_each_method_declares_every_option_key_its_module_reads():
    """`check_options` refuses undeclared keys, so a key a method reads but does not declare would be
    unusable: the declarations must cover what the code reads."""
    import inspect
    import re
    import sys

    from sparsecc.recovery.base import COMMON_OPTIONS, method_options

    read = re.compile(r'extra(?:\.get\(|\[)"([a-z_]+)"|_pair\(extra, "([a-z_]+)"|options\.number\("([a-z_]+)"')
    for name in available_methods():
        keys = {"".join(k) for k in read.findall(inspect.getsource(sys.modules[get_method(name).__module__]))}
        assert keys and keys <= method_options(name), (name, keys - method_options(name))
    shared = {"".join(k) for k in read.findall(inspect.getsource(sys.modules["sparsecc.recovery.outputs"]))}
    assert shared <= COMMON_OPTIONS | {"loss_batches"}, shared
    assert "loss_batches" in method_options("reconstruct") and "loss_batches" in method_options("block-tune")


@pytest.mark.parametrize("bad, key", [({"steps": -1}, "steps"), ({"lr": 0}, "lr"), ({"loss": "l1"}, "loss"),
                                      ({"seq_len": 1}, "seq_len"), ({"batch_size": 0}, "batch_size")])
def test_options_reject_bad_values_naming_the_key(bad, key):
    with pytest.raises(UsageError, match=key):
        RecoveryOptions("distill", **bad)


@pytest.mark.parametrize("fold", [True, False])
def test_masks_of_matches_the_zero_pattern(fold):
    program = sparsify(mlp_program(), {"pattern": "2:4"}, fold=fold).program
    masks = masks_of(program)
    assert sorted(masks) == ["a.weight", "b.weight", "c.weight"]
    for m in masks.values():
        assert m.dtype == torch.bool and m.float().mean().item() == pytest.approx(0.5)
        assert bool((m.reshape(-1, 4).sum(1) == 2).all())  # 2 of every 4 kept
    folded = sparsify(mlp_program(), {"pattern": "2:4"}, fold=True).program
    for fqn, m in masks.items():
        assert torch.equal(m, folded.state_dict[fqn] != 0)


def test_assert_zeros_kept_names_the_weight_that_leaks():
    program = sparsify(mlp_program(), {"pattern": "2:4"}, fold=True).program
    masks = masks_of(program)
    assert_zeros_kept(program, masks)
    w = program.state_dict["b.weight"].detach().clone()
    w[~masks["b.weight"]] = 0
    w.view(-1)[(~masks["b.weight"]).view(-1).nonzero()[0]] = 1e-3  # one masked entry revived
    bad = program_with_weights(program, {"b.weight": w})
    with pytest.raises(VerificationError, match=r"b\.weight: 1 masked entry is nonzero"):
        assert_zeros_kept(bad, masks)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})
    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}  # the old checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left behind


def _loop(tmp_path, steps=12, every=5):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    data = [torch.randn(3, 4) for _ in range(3)]
    opts = RecoveryOptions("distill", steps=steps, checkpoint_dir=str(tmp_path), checkpoint_every=every)
    loop = TrainingLoop(opts, model, opt, len(data), name="t")

    def step(i, b):
        noise = torch.randn(3, 2)  # the RNG stream must be restored on resume
        loss = (model(data[b]) - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach()), 3

    return loop, step, model


def test_ctrl_c_saves_a_checkpoint_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path):
    ref_loop, ref_step, ref_model = _loop(tmp_path / "ref")
    ref_loop.run(ref_step)
    loop, step, _ = _loop(tmp_path / "run")

    def interrupted(i, b):
        if i == 7:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 8
        return step(i, b)

    with pytest.raises(KeyboardInterrupt):
        loop.run(interrupted)
    assert load_checkpoint(tmp_path / "run" / "t.pt")["step"] == 8  # the step in flight finished first
    loop2, step2, model2 = _loop(tmp_path / "run")
    history = loop2.run(step2)
    assert loop2.resumed_from == 8
    assert history == ref_loop.history
    for a, b in zip(ref_model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_from_other_options_is_refused(tmp_path):
    loop, step, _ = _loop(tmp_path, steps=3)
    loop.run(step)
    other, step2, _ = _loop(tmp_path, steps=4)
    with pytest.raises(UsageError, match="other recovery options"):
        other.run(step2)


def test_batch_tokens_counts_real_tokens_not_padding_and_samples_for_images():
    ids = torch.ones(3, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    assert batch_tokens(((), {"input_ids": ids, "attention_mask": mask})) == 8
    assert batch_tokens(((), {"input_ids": ids})) == 15  # no mask: every position is a token
    assert batch_tokens(((torch.zeros(4, 3, 8, 8),), {})) == 4  # images: samples
    assert batch_unit(((), {"input_ids": ids})) == "tok"
    assert batch_unit(((torch.zeros(4, 3, 8, 8),), {})) == "samples"


@pytest.mark.parametrize("method", ["distill", "block-tune", "learned-mask", "sr-ste"])
def test_teacher_driven_methods_refuse_no_batches_and_no_teacher_naming_the_method(method):
    program = sparsify(mlp_program(), {"pattern": "2:4"}).program
    teacher = mlp_program().module()
    batch = ((torch.randn(2, 32),), {})
    with pytest.raises(RecoveryError, match=f"^{method} needs at least one training batch"):
        get_method(method)(program, teacher, [], RecoveryOptions(method, steps=1))
    with pytest.raises(RecoveryError, match=f"^{method} needs a teacher"):
        get_method(method)(program, None, [batch], RecoveryOptions(method, steps=1))
