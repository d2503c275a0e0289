"""Hidden-state distillation: taps that leave the graph's values alone, the loss, the LR schedule."""

from __future__ import annotations

import math

import pytest
import torch

from sparsecc.errors import UsageError
from sparsecc.flows.sparsify import sparsify
from sparsecc.recovery import RecoveryOptions, get_method, masks_of
from sparsecc.recovery.base import RecoveryError, assert_zeros_kept
from sparsecc.recovery.distill import lr_schedule
from sparsecc.recovery.hidden import HiddenTaps, hidden_loss
from sparsecc.testing import export_module

from ._models import MLP, mlp_batches, mlp_program


class Blocks(torch.nn.Module):
    """Two pre-norm residual blocks: three LayerNorms whose outputs are the hidden states."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(32) for _ in range(3))
        self.ffn = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(),
                                                           torch.nn.Linear(64, 32)) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, ffn in zip(self.norms, self.ffn):
            x = x + ffn(norm(x))
        return self.norms[2](x)


def blocks_program(seed: int = 0):
    torch.manual_seed(seed)
    return export_module(Blocks(), (torch.randn(8, 32),))


def test_taps_record_every_norm_output_and_change_no_value():
    program = blocks_program()
    x = torch.randn(8, 32)
    plain = program.module()(x)
    module = program.module()
    taps = HiddenTaps(module, "auto")
    assert taps.points == "norm" and len(taps) == 3
    out = module(x)
    assert torch.equal(out, plain)
    assert len(taps.values) == 3 and torch.equal(taps.values[-1], out)  # the last norm is the output
    sd = program.state_dict
    first = torch.nn.functional.layer_norm(x, (32,), sd["norms.0.weight"], sd["norms.0.bias"])
    torch.testing.assert_close(taps.values[0], first, rtol=0, atol=0)
    taps.clear()
    assert taps.values == []
    # the program itself is untouched: a fresh module has no tap
    assert len([n for n in program.module().graph.nodes if n.op == "call_function"
                and getattr(n.target, "__name__", "") == "_record"]) == 0


def test_taps_fall_back_to_linear_outputs_without_norms():
    taps = HiddenTaps(mlp_program().module(), "auto")
    assert taps.points == "linear" and len(taps) == 3
    with pytest.raises(UsageError, match="no norm op"):
        HiddenTaps(mlp_program().module(), "norm")
    with pytest.raises(UsageError, match="must be one of"):
        HiddenTaps(mlp_program().module(), "attention")


def test_hidden_loss_is_relative_mse_and_names_mismatches():
    t = [torch.ones(4, 8), 10 * torch.ones(2, 3)]
    assert float(hidden_loss(t, t)) == 0.0
    s = [2 * torch.ones(4, 8), 10 * torch.ones(2, 3)]
    assert float(hidden_loss(s, t)) == pytest.approx(0.5)  # (1 / 1 + 0) / 2
    s2 = [torch.ones(4, 8), 11 * torch.ones(2, 3)]
    assert float(hidden_loss(s2, t)) == pytest.approx(0.5 * 1 / 100)  # scale-free: 1/100, averaged
    with pytest.raises(UsageError, match="records 1 hidden states, the teacher 2"):
        hidden_loss(t[:1], t)
    with pytest.raises(UsageError, match=r"tap 1 is \[3, 2\]"):
        hidden_loss([t[0], torch.ones(3, 2)], t)


def _hidden_error(program, dense, batches) -> float:
    s, t = program.module(), dense.module()
    st, tt = HiddenTaps(s), HiddenTaps(t)
    with torch.no_grad():
        for (a, k) in batches:
            s(*a, **k)
            t(*a, **k)
        return float(hidden_loss(st.values, tt.values))


def test_hidden_state_distillation_keeps_zeros_and_closes_the_hidden_gap():
    dense = blocks_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    batches = [((torch.randn(8, 32, generator=torch.Generator().manual_seed(i)),), {}) for i in range(4)]
    opts = RecoveryOptions("distill", steps=30, lr=3e-3, loss="mse", extra={"hidden": "norm"})
    result = get_method("distill")(sparse, dense, batches, opts, None)
    assert_zeros_kept(result.program, masks_of(sparse))
    assert result.details["hidden_states"] == 3
    before, after = _hidden_error(sparse, dense, batches), _hidden_error(result.program, dense, batches)
    assert after < 0.5 * before, (before, after)


def test_zero_hidden_weight_trains_exactly_like_plain_distillation():
    # the taps and the extra teacher call must not change a single step
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    plain = get_method("distill")(sparse, dense, mlp_batches(3),
                                  RecoveryOptions("distill", steps=8, lr=1e-3, loss="mse"), None)
    tapped = get_method("distill")(sparse, dense, mlp_batches(3),
                                   RecoveryOptions("distill", steps=8, lr=1e-3, loss="mse",
                                                   extra={"hidden": "auto", "hidden_weight": 0.0}), None)
    assert tapped.history == plain.history
    for fqn, t in plain.program.state_dict.items():
        assert torch.equal(t, tapped.program.state_dict[fqn]), fqn


def test_hidden_distillation_needs_a_captured_teacher():
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    with pytest.raises(RecoveryError, match="teacher as a captured program"):
        get_method("distill")(sparse, MLP(), mlp_batches(2),
                              RecoveryOptions("distill", steps=2, extra={"hidden": "auto"}), None)


def test_lr_schedule_warms_up_then_follows_a_half_cosine():
    at = lr_schedule(RecoveryOptions("distill", steps=110, lr=1e-3, extra={"lr_schedule": "cosine", "warmup": 10}))
    assert at(0) == pytest.approx(1e-4) and at(9) == pytest.approx(1e-3)
    assert at(10) == pytest.approx(1e-3)
    assert at(60) == pytest.approx(0.5e-3)
    assert at(110) == 0.0 and 0 < at(109) < 1e-6
    assert all(at(i) >= at(i + 1) for i in range(10, 110))
    const = lr_schedule(RecoveryOptions("distill", steps=5, lr=2e-4))
    assert [const(i) for i in range(5)] == [2e-4] * 5
    with pytest.raises(RecoveryError, match="lr_schedule must be constant or cosine"):
        lr_schedule(RecoveryOptions("distill", steps=5, extra={"lr_schedule": "step"}))
    with pytest.raises(RecoveryError, match=r"warmup must lie in \[0, steps=5\)"):
        lr_schedule(RecoveryOptions("distill", steps=5, extra={"warmup": 5}))
    assert math.isclose(lr_schedule(RecoveryOptions("distill", steps=4, lr=1.0,
                                                    extra={"lr_schedule": "cosine"}))(2), 0.5)
