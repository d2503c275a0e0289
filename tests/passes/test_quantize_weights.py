"""QuantizeWeightsPass: int8 per-channel fake quantization keeps every pattern, and lies on the int8 grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.core.pass_infra import PassError
from sparsecc.core.program import state_tensor
from sparsecc.flows.sparsify import mask_specs, sparsify
from sparsecc.passes import QuantizeWeightsPass
from sparsecc.passes.quantize_weights import int8_grid, quant_info, scale_target
from sparsecc.plan.masks import check_pattern
from sparsecc.plan.quantize_options import QuantizeError, QuantizeOptions, activation_absmax, parse_quantize
from sparsecc.plan.recipe import RecipeError, load_recipe
from sparsecc.testing import export_module


class Net(nn.Module):
    """A conv (weight [Cout, Cin, 1, 1]), a linear and an ``x @ W`` matmul (weight stored [in, out])."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 48)
        self.w = nn.Parameter(torch.randn(48, 16))

    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        return torch.relu(self.fc(h)) @ self.w


X = (torch.randn(2, 16, 4, 4),)
PATTERNS = [("unstructured", 0.3), ("unstructured", 0.9), ("2:4", None), ("1:4", None), ("4:8", None),
            ("4x4", 0.5), ("channel", 0.25)]


def _sparse_program(pattern: str, sparsity: float | None, seed: int):
    recipe = {"pattern": pattern, **({"sparsity": sparsity} if sparsity is not None else {})}
    return sparsify(export_module(Net(seed), X), recipe, fold=True).program


@settings(max_examples=25, deadline=None)
@given(case=st.sampled_from(PATTERNS), seed=st.integers(0, 2**16))
def test_zeros_and_patterns_survive_quantization(case, seed):
    program = _sparse_program(*case, seed)
    specs = mask_specs(program)
    assert specs  # every weight got a pattern
    before = {f: state_tensor(program, f).detach().clone() for f in specs}
    out = QuantizeWeightsPass()(program).program  # ensures() re-checks grid and pattern
    for fqn, spec in specs.items():
        w = state_tensor(out, fqn)
        assert torch.all(w[before[fqn] == 0] == 0), fqn  # every zero is still an exact zero
        rec = quant_info(out, fqn)
        why, _ = check_pattern(w, spec.pattern, spec.target, rec["axis"], 1 - rec["axis"] if w.dim() == 2 else 1)
        assert why is None, (fqn, why)


@pytest.mark.parametrize("pattern,sparsity", PATTERNS[:3])
def test_weights_lie_on_the_int8_grid(pattern, sparsity):
    program = QuantizeWeightsPass()(_sparse_program(pattern, sparsity, 0)).program
    for fqn in mask_specs(program):
        q, scale = int8_grid(program, fqn)
        rec = quant_info(program, fqn)
        w = state_tensor(program, fqn)
        shape = [1] * w.dim()
        shape[rec["axis"]] = -1
        assert torch.equal(q.float() * scale.reshape(shape), w)
        assert int(q.abs().max()) <= 127
        # symmetric per output channel: the largest |q| of each nonzero channel is exactly 127
        per_channel = q.abs().amax(dim=[d for d in range(w.dim()) if d != rec["axis"]])
        nonzero = w.abs().amax(dim=[d for d in range(w.dim()) if d != rec["axis"]]) > 0
        assert torch.all(per_channel[nonzero] == 127)
        assert rec["dtype"] == "int8" and rec["scale"] == scale_target(fqn)
        assert program.constants[scale_target(fqn)].shape == (w.shape[rec["axis"]],)


def test_axis_follows_the_output_channel():
    program = QuantizeWeightsPass()(export_module(Net(1), X)).program
    assert quant_info(program, "conv.weight")["axis"] == 0
    assert quant_info(program, "fc.weight")["axis"] == 0
    assert quant_info(program, "w")["axis"] == 1  # x @ W: W is [in, out]


def test_program_runs_close_and_stays_differentiable():
    dense = export_module(Net(2), X)
    program = QuantizeWeightsPass()(dense).program
    with torch.no_grad():
        want, got = dense.module()(*X), program.module()(*X)
    # each weight moves by at most scale/2 per entry: a few 1e-3 here, nothing like an O(1) error
    assert float((want - got).abs().max()) < 0.05 * float(want.abs().max())
    module = program.module()
    params = dict(module.named_parameters())
    module(*X).square().sum().backward()
    assert params["fc.weight"].grad is not None and params["fc.weight"].grad.abs().sum() > 0


def test_requantizing_after_fine_tuning_reuses_the_scale_constant():
    program = QuantizeWeightsPass()(_sparse_program("2:4", None, 3)).program
    again = QuantizeWeightsPass()(program).program
    assert sorted(again.constants) == sorted(program.constants)
    for fqn in mask_specs(again):
        assert torch.equal(state_tensor(again, fqn), state_tensor(program, fqn))  # already on the grid


def test_static_activations_record_calibrated_scales():
    program = export_module(Net(4), X)
    batches = [((torch.randn(2, 16, 4, 4) * s,), {}) for s in (1.0, 3.0)]
    absmax = activation_absmax(program, ["conv.weight", "fc.weight", "w"], batches)
    assert absmax["conv.weight"] == pytest.approx(max(float(b[0][0].abs().max()) for b in batches))
    out = QuantizeWeightsPass(QuantizeOptions(activations="static"), act_absmax=absmax)(program).program
    assert quant_info(out, "fc.weight")["act_scale"] == pytest.approx(absmax["fc.weight"] / 127)
    with pytest.raises(PassError, match="activations: static needs a calibrated scale"):
        QuantizeWeightsPass(QuantizeOptions(activations="static"), act_absmax={"w": 1.0})(program)


def test_recipe_section_parses_and_rejects_bad_values():
    r = load_recipe({"pattern": "2:4", "quantize": {"weights": "int8", "activations": "static"}})
    assert r.quantize == QuantizeOptions("int8", "static")
    assert r.to_dict()["quantize"] == {"weights": "int8", "activations": "static"}
    assert load_recipe({"pattern": "2:4"}).quantize is None
    assert parse_quantize("int8") == QuantizeOptions()
    with pytest.raises(RecipeError, match="quantize.activations"):
        load_recipe({"pattern": "2:4", "quantize": {"activations": "per_tensor"}})
    with pytest.raises(RecipeError, match="quantize.weights"):
        load_recipe({"pattern": "2:4", "quantize": {"weights": "int4"}})
    with pytest.raises(RecipeError, match="quantize.bits"):
        load_recipe({"pattern": "2:4", "quantize": {"bits": 8}})
    with pytest.raises(QuantizeError, match="activations"):
        QuantizeOptions(activations="sometimes")


def test_recipe_quantize_section_runs_in_sparsify():
    from sparsecc.flows.sparsify import recipe_needs_calibration
    from sparsecc.plan.calibrate import CalibrationData

    recipe = {"pattern": "2:4", "quantize": {"weights": "int8"}}
    result = sparsify(export_module(Net(5), X), recipe, fold=True)
    program = result.program
    for fqn, spec in mask_specs(program).items():
        assert quant_info(program, fqn)["activations"] == "dynamic"
        q, scale = int8_grid(program, fqn)
        assert torch.count_nonzero(q) <= q.numel() // 2  # 2:4 kept through quantization
    static = {"pattern": "2:4", "quantize": {"activations": "static"}}
    assert recipe_needs_calibration(load_recipe(static)) and not recipe_needs_calibration(load_recipe(recipe))
    with pytest.raises(QuantizeError, match="static needs calibration data"):
        sparsify(export_module(Net(5), X), static, fold=True)
    data = CalibrationData(batches=[((torch.randn(2, 16, 4, 4),), {})])
    out = sparsify(export_module(Net(5), X), static, fold=True, calibration=data).program
    assert quant_info(out, "fc.weight")["act_scale"] > 0
