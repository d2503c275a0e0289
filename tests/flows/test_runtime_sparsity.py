"""Recipes with ``activations:`` / ``attention:``: sparsify and compile apply them last and record them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecc.errors import UsageError
from sparsecc.flows.compile import compile
from sparsecc.flows.sparsify import recipe_needs_calibration, sparsify
from sparsecc.plan.activation_sparsity import measure_activations
from sparsecc.plan.calibration_data import CalibrationData
from sparsecc.plan.recipe import load_recipe
from sparsecc.testing import export_module

aten = torch.ops.aten


class Mlp(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.up, self.act, self.down, self.head = nn.Linear(32, 128), act, nn.Linear(128, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.down(self.act(self.up(x))))


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, 64, 3, 4, 8).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(1, 64, 32)


def _mlp(act: nn.Module):
    torch.manual_seed(0)
    return export_module(Mlp(act).eval(), (torch.randn(4, 32),))


def _calibration(n: int = 6) -> CalibrationData:
    g = torch.Generator().manual_seed(1)
    return CalibrationData([((torch.randn(4, 32, generator=g),), {}) for _ in range(n)])


def _thresholds(program) -> int:
    return sum(n.target == aten.where.ScalarOther for n in program.graph.nodes)


def test_sparsify_prunes_weights_then_thresholds_the_pruned_programs_inputs():
    recipe = load_recipe({"pattern": "2:4", "activations": {"sparsity": 0.5}})
    assert recipe_needs_calibration(recipe)  # magnitude needs none; the thresholds do
    cal = _calibration()
    result = sparsify(_mlp(nn.GELU()), recipe, fold=True, calibration=cal)
    assert result.report.sparse_layers == 3 and _thresholds(result.program) == 2  # up and down, not the head
    layers = result.report.runtime["activations"]["layers"]
    assert set(layers) == {"up.weight", "down.weight"} and all(v["sparsity"] == 0.5 for v in layers.values())
    achieved = {s.fqn: s.zero for s in measure_activations(result.program, cal.batches)}
    assert achieved["up.weight"] == pytest.approx(0.5, abs=0.05)
    assert result.report.to_dict()["runtime"] == result.report.runtime


def test_a_runtime_only_recipe_leaves_the_weights_dense():
    program = _mlp(nn.GELU())
    result = sparsify(program, {"activations": {"sparsity": 0.4, "allocation": "greedy"}}, fold=True,
                      calibration=_calibration())
    assert result.report.sparse_layers == 0
    assert all(torch.equal(result.program.state_dict[k], v) for k, v in program.state_dict.items())
    assert result.report.runtime["activations"]["allocation"] == "greedy"
    assert _thresholds(result.program) >= 1


def test_activation_thresholds_without_calibration_data_are_refused():
    with pytest.raises(UsageError, match="activations.*calibration"):
        sparsify(_mlp(nn.GELU()), {"pattern": "2:4", "activations": 0.4}, fold=True)


def test_attention_section_rewrites_and_refuses_a_program_without_attention():
    torch.manual_seed(0)
    program = export_module(Attn().eval(), (torch.randn(1, 64, 32),))
    result = sparsify(program, {"attention": {"block": 16, "tau": 0.9}}, fold=True)
    assert result.report.runtime["attention"]["rewritten"]
    assert any("block_sparse_attention" in str(n.target) for n in result.program.graph.nodes)
    with pytest.raises(UsageError, match="attention.*no attention op"):
        sparsify(_mlp(nn.GELU()), {"attention": {}}, fold=True)


def test_compile_with_exact_relu_skips_zeros_on_torch_sparse_and_records_it(tmp_path):
    torch.manual_seed(0)
    model, x = Mlp(nn.ReLU()).eval(), torch.randn(1, 32)
    result = compile(model, {"activations": {"exact": True}}, tmp_path / "b", example_args=(x,),
                     targets=["torch-sparse"], dense_reference=False)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    target = manifest["targets"]["torch-sparse"]
    assert target["parity"]["ok"]
    assert target["artifact"]["meta"]["activation_kernels"]  # down reads ReLU's zeros
    assert result.report.runtime["activations"] == {"exact_relu": True}
    assert result.report.sparse_layers == 0


def test_sparsify_with_calibration_loads_batches_for_thresholds_alone(monkeypatch):
    """`sparsecc eval --recipe` / sweep: a recipe whose criterion needs no data still gets calibration
    batches when its activation thresholds do (`recipe_calibration`)."""
    import sparsecc.flows.sparsify as sparsify_flow
    from sparsecc.flows.sparsify import recipe_calibration
    from sparsecc.flows.sweep import sparsify_with_calibration

    asked, said = [], []

    def fake_calibration_for(spec, samples, seq_len):
        asked.append(samples)
        return _calibration()

    monkeypatch.setattr(sparsify_flow, "calibration_for", fake_calibration_for)
    spec = type("Spec", (), {"name": "mlp"})()
    assert recipe_calibration(spec, load_recipe({"pattern": "2:4"}), said.append) is None and not asked
    recipe = {"pattern": "2:4", "activations": {"sparsity": 0.5}, "calibration": {"samples": 6}}
    result = sparsify_with_calibration(_mlp(nn.GELU()), spec, recipe)
    assert asked == [6] and _thresholds(result.program) == 2
    recipe_calibration(spec, load_recipe(recipe), said.append)
    assert said == ["loading 6 calibration batches"]
