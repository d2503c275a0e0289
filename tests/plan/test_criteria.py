"""Calibrated criteria: Wanda's formula and row-wise rule, Taylor, SparseGPT through sparsify."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc import sparsify
from sparsecc.plan.calibrate import CalibrationData, collect_stats
from sparsecc.plan.criteria import CriterionContext, choose_mask, criterion_info, get_criterion, needs_calibration
from sparsecc.core.ir import SparsityPattern
from sparsecc.plan.masks import compute_mask, pattern_violation, pruned_units, rows_view
from sparsecc.testing import export_module


def test_declared_needs():
    assert needs_calibration("magnitude") == needs_calibration("random") == frozenset()
    assert needs_calibration("wanda") == {"act_sq"}
    assert needs_calibration("sparsegpt") == {"hessian"}
    assert needs_calibration("taylor") == {"taylor"}
    assert criterion_info("sparsegpt").kind == "solver"
    with pytest.raises(KeyError, match="known: "):
        criterion_info("nope")


def test_wanda_score_is_weight_magnitude_times_input_norm():
    w = torch.randn(6, 10)
    act_sq = torch.rand(10) * 4
    got = get_criterion("wanda")(w, CriterionContext("w", 0, 1, {"act_sq": act_sq}))
    torch.testing.assert_close(got, w.abs() * act_sq.sqrt()[None, :])


def test_wanda_on_a_conv_uses_the_rows_view_columns_and_groups():
    w = torch.randn(8, 2, 3, 3)  # groups=2: rows 0-3 read group 0, rows 4-7 group 1
    act_sq = torch.rand(2, 18)
    got = get_criterion("wanda")(w, CriterionContext("w", 0, 1, {"act_sq": act_sq}))
    mat = rows_view(w, 0, 1).abs()
    want = mat * act_sq.sqrt().repeat_interleave(4, dim=0)
    torch.testing.assert_close(rows_view(got, 0, 1), want)


def test_missing_statistics_name_the_weight_and_what_to_pass():
    with pytest.raises(ValueError, match="layer.weight.*act_sq.*calibration"):
        get_criterion("wanda")(torch.ones(2, 2), CriterionContext("layer.weight", 0, 1, {}))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 17), sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 99))
def test_row_wise_unstructured_is_exact_per_layer_and_balanced_per_row(rows, cols, sparsity, seed):
    scores = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))
    keep = compute_mask(scores, SparsityPattern.unstructured(), sparsity, 0, 1, row_wise=True)
    pruned = (~keep).sum(1)
    assert int(pruned.sum()) == pruned_units(rows * cols, sparsity)
    assert int(pruned.max() - pruned.min()) <= 1
    # within each row the pruned entries are the lowest-scoring ones
    for r in range(rows):
        if 0 < int(pruned[r]) < cols:
            assert scores[r][~keep[r]].max() <= scores[r][keep[r]].min()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(3))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        for layer in self.layers:
            x = x + torch.relu(layer(x))
        return self.head(x)


def _setup(seed=0):
    torch.manual_seed(seed)
    m = Net().eval()
    g = torch.Generator().manual_seed(seed)
    # Inputs with a few loud features: where activation-aware criteria differ from magnitude.
    scale = torch.ones(16)
    scale[:3] = 20.0
    batches = [((torch.randn(32, 16, generator=g) * scale,), {}) for _ in range(4)]
    return m, export_module(m, batches[0][0]), CalibrationData(batches)


def _output_error(m, program, data):
    with torch.no_grad():
        ref = torch.cat([m(*b[0]) for b in data.batches])
        got = torch.cat([program.module()(*b[0]) for b in data.batches])
    return float((got - ref).square().mean())


@pytest.mark.parametrize("pattern", ["2:4", "unstructured", "4x4"])
def test_calibrated_criteria_beat_magnitude_on_loud_features(pattern):
    m, program, data = _setup()
    errs = {}
    for crit in ("magnitude", "wanda", "sparsegpt"):
        recipe = {"pattern": pattern, "sparsity": 0.5, "criterion": crit}
        result = sparsify(program, recipe, fold=True, calibration=data if needs_calibration(crit) else None)
        for s in result.plan.specs:
            w = result.program.state_dict[s.fqn]
            assert pattern_violation(w, s.pattern, s.target, 0, 1) is None
        errs[crit] = _output_error(m, result.program, data)
    assert errs["wanda"] < errs["magnitude"]
    assert errs["sparsegpt"] < errs["wanda"]


def test_sparsegpt_replaces_weights_and_the_masked_program_stays_trainable():
    m, program, data = _setup()
    result = sparsify(program, {"pattern": "2:4", "criterion": "sparsegpt"}, calibration=data)
    w_new = result.program.state_dict["layers.1.weight"]
    w_old = program.state_dict["layers.1.weight"]
    kept = w_new != 0
    assert not torch.allclose(w_new[kept], w_old[kept])  # repaired, not just masked
    out = result.program.module()(*data.batches[0][0])
    out.sum().backward()  # masks in the graph still backpropagate


def test_sequential_and_one_pass_calibration_differ_after_the_first_block():
    m, program, data = _setup()
    seq = sparsify(program, {"pattern": "2:4", "criterion": "wanda", "calibration": {"sequential": True}},
                   calibration=data, fold=True)
    one = sparsify(program, {"pattern": "2:4", "criterion": "wanda", "calibration": {"sequential": False}},
                   calibration=data, fold=True)
    s0, o0 = seq.program.state_dict, one.program.state_dict
    assert torch.equal(s0["layers.0.weight"], o0["layers.0.weight"])  # same inputs for the first block
    assert not torch.equal(s0["head.weight"], o0["head.weight"])


def test_calibrated_recipe_without_data_says_what_to_pass():
    _, program, _ = _setup()
    with pytest.raises(ValueError, match="needs calibration data"):
        sparsify(program, {"pattern": "2:4", "criterion": "wanda"})


def test_taylor_masks_prune_the_lowest_weight_times_gradient():
    from sparsecc.plan.calibrate import gradient_stats

    m, program, data = _setup()
    result = sparsify(program, {"pattern": "unstructured", "sparsity": 0.5, "criterion": "taylor"},
                      calibration=data, fold=True)
    scores = gradient_stats(program, data)
    for s in result.plan.specs:
        want = compute_mask(scores[s.fqn]["taylor"], s.pattern, 0.5, 0, 1)
        assert torch.equal(result.program.state_dict[s.fqn] != 0, want & (program.state_dict[s.fqn] != 0))


def test_embeddings_fall_back_to_magnitude(zoo):
    spec, program = zoo("llama")
    data = CalibrationData([spec.make_inputs(2, 8)])
    recipe = {"pattern": "unstructured", "sparsity": 0.5, "criterion": "wanda",
              "layers": {"include_embeddings": True, "include_tied": True}}
    result = sparsify(program, recipe, calibration=data, fold=True)
    crit = {s.fqn: s.criterion for s in result.plan.specs}
    emb = [f for f in crit if "embed" in f]
    assert emb and all(crit[f] == "magnitude" for f in emb)
    assert any(c == "wanda" for c in crit.values())
