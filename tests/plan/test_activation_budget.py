"""Allocating activation sparsity across layer groups: grouping, the weighted target, the cheaper group first."""

from __future__ import annotations

import pytest
import torch

from sparsecc.errors import UsageError
from sparsecc.passes import ActivationSparsityPass
from sparsecc.plan.activation_budget import allocate_sparsity, layer_groups, weighted_sparsity
from sparsecc.plan.activation_sparsity import measure_activations, select_layers, thresholds_for
from sparsecc.testing import export_module

QKV = "blocks.*.k.weight+blocks.*.q.weight+blocks.*.v.weight"
MLP = "blocks.*.mlp.weight"


class Block(torch.nn.Module):
    """q, k and v read one input and barely reach the output; the MLP carries it."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(16, 16, bias=False) for _ in range(3))
        self.mlp = torch.nn.Linear(16, 16, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.01 * (self.q(x) + self.k(x) * self.v(x))
        return x + self.mlp(torch.tanh(x))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block() for _ in range(2))
        self.head = torch.nn.Linear(16, 4)  # left out, as a model's head is by default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _setup():
    torch.manual_seed(0)
    program = export_module(Net().eval(), (torch.randn(8, 16),))
    g = torch.Generator().manual_seed(1)
    batches = [((torch.randn(8, 16, generator=g),), {}) for _ in range(4)]
    stats = select_layers(measure_activations(program, batches, sample=1 << 18))
    assert "head.weight" not in {s.fqn for s in stats}
    return program, batches, stats


def _error(program, batches, stats, sparsity) -> float:
    sparse = ActivationSparsityPass(thresholds_for(stats, sparsity))(program).program
    dense_m, sparse_m = program.module(), sparse.module()
    with torch.no_grad():
        num = sum(float((sparse_m(*a) - dense_m(*a)).square().sum()) for a, _ in batches)
        den = sum(float(dense_m(*a).square().sum()) for a, _ in batches)
    return num / den


def test_groups_are_layer_kinds_across_blocks_with_shared_inputs_together():
    program, _batches, stats = _setup()
    groups = layer_groups(stats, program.module())
    assert set(groups) == {QKV, MLP}
    assert sorted(groups[QKV]) == sorted(f"blocks.{i}.{n}.weight" for i in (0, 1) for n in "qkv")
    assert sorted(groups[MLP]) == ["blocks.0.mlp.weight", "blocks.1.mlp.weight"]


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_allocation_reaches_the_weighted_target_and_spends_it_where_it_costs_least(target):
    program, batches, stats = _setup()
    alloc = allocate_sparsity(program, stats, target, batches, step=0.05)
    sizes = {s.fqn: 16 * 16 for s in stats}
    reached = weighted_sparsity(alloc, sizes)
    assert target - 1e-9 <= reached < target + 0.05  # one step past the target at most
    qkv = {alloc[f"blocks.{i}.{n}.weight"] for i in (0, 1) for n in "qkv"}
    assert len(qkv) == 1  # one input, one threshold
    assert qkv.pop() > alloc["blocks.0.mlp.weight"]  # the layers that barely reach the output go first
    uniform = _error(program, batches, stats, reached)
    assert _error(program, batches, stats, alloc) < 0.5 * uniform


def test_weighted_sparsity_counts_weights():
    assert weighted_sparsity({"a": 0.5, "b": 0.0}, {"a": 300, "b": 100}) == pytest.approx(0.375)
    assert weighted_sparsity({}, {}) == 0.0


def test_allocation_refuses_bad_requests():
    program, batches, stats = _setup()
    with pytest.raises(UsageError, match="target"):
        allocate_sparsity(program, stats, 0.95, batches)  # above max_sparsity
    with pytest.raises(UsageError, match="target"):
        allocate_sparsity(program, stats, 0.0, batches)
    with pytest.raises(UsageError, match="step"):
        allocate_sparsity(program, stats, 0.4, batches, step=0.0)
    with pytest.raises(UsageError, match="calibration batch"):
        allocate_sparsity(program, stats, 0.4, [])
