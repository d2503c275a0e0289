"""BatchNorm-predicted channel statistics: the bn_energy criterion and the compensation of removed means."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecc.passes.structured import BnPrior, find_dependency_groups, plan_structured_pruning
from sparsecc.flows.structured import prune_structured
from sparsecc.plan.structured_options import StructuredOptions, parse_structured
from sparsecc.testing import export_module


class Block(nn.Module):
    """1x1 identity conv -> BN -> ReLU6 -> 1x1 projection -> BN: the MBConv expansion pattern."""

    def __init__(self, c: int = 8, out: int = 4):
        super().__init__()
        self.expand = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.project = nn.Conv2d(c, out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)

    def forward(self, x):
        return self.bn2(self.project(F.relu6(self.bn1(self.expand(x)))))


def _block(seed: int = 0) -> Block:
    """Inputs x ~ N(0, I) make the expand output exactly N(0, 1) per channel, independent across
    channels, so BN1's running statistics (0, 1) are the true ones and its prior is exact."""
    g = torch.Generator().manual_seed(seed)
    m = Block().eval()
    with torch.no_grad():
        m.expand.weight.copy_(torch.eye(8)[:, :, None, None])
        m.bn1.weight.copy_(torch.rand(8, generator=g) * 2 + 0.5)
        m.bn1.bias.copy_(torch.randn(8, generator=g) * 2)
        m.bn1.running_mean.zero_()
        m.bn1.running_var.fill_(1.0 - m.bn1.eps)
        m.project.weight.copy_(torch.randn(4, 8, 1, 1, generator=g))
        m.bn2.weight.copy_(torch.rand(4, generator=g) + 0.5)
        m.bn2.bias.copy_(torch.randn(4, generator=g))
        # BN2's statistics: the true mean and variance of the projection's output
        a = F.relu6(m.bn1(torch.randn(200_000, 8, 1, 1, generator=g)))
        y = m.project(a)
        m.bn2.running_mean.copy_(y.mean((0, 2, 3)))
        m.bn2.running_var.copy_(y.var((0, 2, 3)) - m.bn2.eps)
    return m


def _sampled_moments(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent check: random draws of N(β, γ²) through ReLU6."""
    z = bn.bias.detach()[:, None] + bn.weight.detach()[:, None] * torch.randn(1, 400_000, generator=torch.Generator().manual_seed(7))
    a = z.clamp(0, 6)
    return a.mean(1), a.var(1)


def test_predicted_moments_match_sampled_ones():
    m = _block()
    program = export_module(m, (torch.randn(2, 8, 4, 4),))
    (consumer,) = BnPrior(program).consumers("project.weight", 1)
    mean, var = _sampled_moments(m.bn1)
    torch.testing.assert_close(consumer.moments.mean, mean, rtol=0.01, atol=0.01)
    torch.testing.assert_close(consumer.moments.var, var, rtol=0.02, atol=0.01)
    # the projection's output goes to bn2: its scale is gamma^2 / (running var + eps)
    torch.testing.assert_close(consumer.out_scale, m.bn2.weight.detach() ** 2 / (m.bn2.running_var + m.bn2.eps))


def test_bn_energy_is_the_share_of_the_normalised_output_variance():
    m = _block()
    with torch.no_grad():  # channel 3 dead (ReLU6 of a value below 0): carries nothing
        m.bn1.weight[3], m.bn1.bias[3] = 0.0, -1.0
    program = export_module(m, (torch.randn(2, 8, 4, 4),))
    analysis = find_dependency_groups(program)
    (group,) = [g for g in analysis.prunable() if any(mb.target == "project.weight" and mb.role == "in" for mb in g.members)]
    got = BnPrior(program).scores(analysis, group)
    _, var = _sampled_moments(m.bn1)
    w2 = m.project.weight.detach()[:, :, 0, 0] ** 2
    scale = m.bn2.weight.detach() ** 2 / (m.bn2.running_var + m.bn2.eps)
    want = (scale[:, None] * w2).sum(0) * var
    np.testing.assert_allclose(got, want.numpy(), rtol=0.03, atol=1e-6)
    assert got[3] == 0.0
    plan = plan_structured_pruning(program, 0.25, analysis=analysis, criterion="bn_energy", units=("channel",))
    assert 3 not in plan.kept[group.id] and not plan.fallback


def test_compensation_keeps_the_next_batchnorm_output_mean_and_variance():
    m = _block()
    x = torch.randn(4000, 8, 4, 4, generator=torch.Generator().manual_seed(3))
    program = export_module(m, (x,))  # a static batch of all the data: the model is tiny
    opts = StructuredOptions(ratio=0.5, units=("channel",), criterion="l2", include=("out:expand",))
    plain = prune_structured(program, opts, verify_inputs=[((x,), {})])
    fixed = prune_structured(program, opts, verify_inputs=[((x,), {})], compensate=True)
    assert fixed.report["compensated"] == ["bn2.running_mean", "bn2.running_var"]
    assert fixed.report["left_unrepaired"] == {}
    with torch.no_grad():
        dense, before, after = m(x), plain.program.module()(x), fixed.program.module()(x)
    std = dense.std((0, 2, 3))
    mean_err = lambda y: ((y.mean((0, 2, 3)) - dense.mean((0, 2, 3))) / std).abs().max()  # noqa: E731
    assert mean_err(after) < 0.03
    assert mean_err(before) > 0.3  # the removed channels carried a large mean
    # the variance taken off bn2 gives the kept signal the scale the next layers expect
    torch.testing.assert_close(after.std((0, 2, 3)), std, rtol=0.03, atol=0.0)
    # the options route it too, and the report says so
    routed = prune_structured(program, StructuredOptions(**{**opts.__dict__, "compensate": True}))
    assert routed.report["options"]["compensate"] is True
    torch.testing.assert_close(routed.program.state_dict["bn2.running_mean"], fixed.program.state_dict["bn2.running_mean"])


def test_compensation_uses_the_bias_when_no_batchnorm_follows():
    class NoNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(6)
            self.fc1 = nn.Linear(6, 6)
            self.fc2 = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc2(F.relu(self.bn(self.fc1(x))))

    torch.manual_seed(0)
    m = NoNorm().eval()
    with torch.no_grad():
        m.bn.bias.copy_(torch.linspace(-1, 2, 6))
    program = export_module(m, (torch.randn(4, 6),))
    res = prune_structured(program, StructuredOptions(ratio=0.5, units=("channel",), criterion="bn_energy"), compensate=True)
    assert res.report["compensated"] == ["fc2.bias"]
    keep = torch.from_numpy(next(iter(res.plan.kept.values())))
    drop = ~keep
    z = m.bn.bias.detach()[:, None] + m.bn.weight.detach()[:, None] * torch.randn(1, 400_000)
    mean = z.relu().mean(1)
    want = m.fc2.bias.detach() + m.fc2.weight.detach()[:, drop] @ mean[drop]
    torch.testing.assert_close(res.program.state_dict["fc2.bias"], want, rtol=0.01, atol=0.01)


def test_bn_energy_falls_back_to_l2_without_a_batchnorm_and_says_so():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    program = export_module(m, (torch.randn(2, 8),))
    energy = plan_structured_pruning(program, 0.5, criterion="bn_energy", units=("channel",))
    l2 = plan_structured_pruning(program, 0.5, criterion="l2", units=("channel",))
    (gid,) = energy.kept
    assert "l2" in energy.fallback[gid] and "BatchNorm" in energy.fallback[gid]
    np.testing.assert_array_equal(energy.kept[gid], l2.kept[gid])
    assert energy.to_dict()["groups"][gid]["criterion"].startswith("l2")
    res = prune_structured(program, {"ratio": 0.5, "criterion": "bn_energy", "compensate": True})
    assert res.report["compensated"] == []
    assert "no prediction" in res.report["left_unrepaired"]["2.weight"]


def test_least_squares_repair_skips_layers_with_too_few_calibration_rows():
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    m = Pooled().eval()
    calib = [((torch.randn(2, 3, 8, 8),), {}) for _ in range(3)]  # 6 pooled rows for 8 kept columns
    program = export_module(m, calib[0][0])
    res = prune_structured(program, StructuredOptions(ratio=0.5, units=("channel",)), calibration=calib, reconstruct=True)
    assert res.report["reconstructed"] == []
    assert "6 calibration rows for 8 kept columns" in res.report["left_unrepaired"]["fc.weight"]
    many = [((torch.randn(2, 3, 8, 8),), {}) for _ in range(20)]  # 40 rows >= 4 per kept column
    assert prune_structured(program, StructuredOptions(ratio=0.5, units=("channel",)), calibration=many,
                            reconstruct=True).report["reconstructed"] == ["fc.weight"]


def test_recipe_compensate_must_be_a_bool():
    def error(k, v, msg):
        return ValueError(f"{k}: {v!r} {msg}")

    assert parse_structured({"compensate": True, "criterion": "bn_energy"}, error).compensate is True
    with pytest.raises(ValueError, match="structured.compensate: 'yes' must be true or false"):
        parse_structured({"compensate": "yes"}, error)
