"""Layer-wise budgets: exact global targets, the methods' formulas, and clear errors."""

import math

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsecc.core.analyze import Analysis, PrunableWeight, find_prunable_weights
from sparsecc.plan.budgets import (
    Budget,
    BudgetError,
    SensitivityTable,
    allocate,
    block_of,
    erk_coefficient,
    needs_calibration,
    needs_program,
    needs_stats,
    parse_budget,
    sensitivity_sweep,
)
from sparsecc.plan.calibrate import CalibrationData, collect_stats, objective_loss
from sparsecc.core.ir import MaskSpec, SparsityPattern
from sparsecc.plan.masks import compute_mask, pruned_units
from sparsecc.plan.recipe import RecipeError, load_recipe, plan_masks
from sparsecc.testing import export_module

UNSTRUCTURED = SparsityPattern.unstructured()


def _weight(fqn: str, shape: tuple[int, ...]) -> PrunableWeight:
    role = "linear" if len(shape) == 2 else "conv"
    return PrunableWeight(fqn=fqn, node=fqn.replace(".", "_"), layer=fqn.rsplit(".", 1)[0], role=role,
                          op="aten.linear.default", shape=shape, reduction_axis=1, output_axis=0, groups=1,
                          flops=0, consumers=(fqn,))


def _layers(shapes, pattern=UNSTRUCTURED, target=0.5):
    weights = [_weight(f"layers.{i}.weight", s) for i, s in enumerate(shapes)]
    specs = [MaskSpec(w.fqn, pattern, target, layer=w.layer) for w in weights]
    return specs, Analysis(weights=weights)


def _pruned(alloc, analysis) -> int:
    """Pruned params as the masks will prune them (`pruned_units` per layer)."""
    by = analysis.by_fqn()
    total = 0
    for s in alloc.specs:
        w = by[s.fqn]
        if s.pattern.kind == "block":
            units, unit = w.numel // math.prod(s.pattern.block), math.prod(s.pattern.block)
        elif s.pattern.kind == "channel":
            units, unit = w.out_size, w.numel // w.out_size
        else:
            units, unit = w.numel, 1
        total += pruned_units(units, s.target) * unit
    return total


SHAPES = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 300), st.integers(1, 300)),
        st.tuples(st.integers(1, 64), st.integers(1, 32), st.integers(1, 3), st.integers(1, 3)),
    ),
    min_size=1, max_size=12,
)


# -- exact targets ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(shapes=SHAPES, target=st.floats(0.0, 0.99), method=st.sampled_from(["uniform", "erk"]),
       cap=st.sampled_from([None, 0.995, 1.0]))
def test_weight_only_methods_hit_the_target_exactly(shapes, target, method, cap):
    specs, analysis = _layers(shapes)
    params = analysis.total_params
    budget = Budget(method, max_sparsity=cap)
    hi = budget.cap(target)
    # Feasible when the cap, rounded down per layer to whole weights, still leaves room for the target
    # (one 1-weight layer capped at 99.5% can lose none of it).
    reachable = sum(math.floor(hi * math.prod(s) + 1e-9) for s in shapes)
    if round(target * params) > reachable:
        with pytest.raises(BudgetError, match="cannot be met"):
            allocate(specs, analysis, budget, target=target)
        return
    alloc = allocate(specs, analysis, budget, target=target)
    assert _pruned(alloc, analysis) == round(target * params) == alloc.pruned == alloc.target_pruned
    for s in alloc.specs:
        assert 0.0 <= s.target <= hi + 1e-12


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 16).map(lambda k: 4 * k), st.integers(1, 16).map(lambda k: 4 * k)),
                       min_size=1, max_size=8),
       target=st.floats(0.0, 0.95), kind=st.sampled_from(["channel", "4x4"]))
def test_structured_units_land_within_one_unit(shapes, target, kind):
    pattern = SparsityPattern.parse(kind)
    specs, analysis = _layers(shapes, pattern)
    alloc = allocate(specs, analysis, Budget("erk"), target=target)
    want = round(target * analysis.total_params)
    largest_unit = max(s[1] for s in shapes) if kind == "channel" else 16
    assert abs(_pruned(alloc, analysis) - want) < largest_unit
    assert _pruned(alloc, analysis) == alloc.pruned


def test_uniform_keeps_every_layer_within_one_entry_of_the_target():
    specs, analysis = _layers([(3, 3), (7, 5), (11, 13), (1, 1)])
    alloc = allocate(specs, analysis, Budget("uniform"), target=0.5)
    assert alloc.pruned == round(0.5 * analysis.total_params)
    for s, w in zip(alloc.specs, analysis.weights):
        assert abs(s.target * w.numel - 0.5 * w.numel) < 1.0


# -- ERK ------------------------------------------------------------------------------


def _erk_reference(shapes, target):
    """The iterative ERK solve as RigL describes it: mark layers dense until ε fits."""
    n = [math.prod(s) for s in shapes]
    coef = [sum(s) / math.prod(s) for s in shapes]
    dense: set[int] = set()
    while True:
        keep = (1 - target) * sum(n) - sum(n[i] for i in dense)
        eps = keep / sum(coef[i] * n[i] for i in range(len(n)) if i not in dense)
        over = [i for i in range(len(n)) if i not in dense and eps * coef[i] > 1]
        if not over:
            return [1.0 if i in dense else eps * coef[i] for i in range(len(n))], dense
        dense.add(max(over, key=lambda i: coef[i]))


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_erk_matches_its_formula_including_dense_layers(target):
    shapes = [(4, 3), (16, 8, 3, 3), (64, 64), (256, 128), (10, 256)]
    specs, analysis = _layers(shapes)
    alloc = allocate(specs, analysis, Budget("erk"), target=target)
    density, dense = _erk_reference(shapes, target)
    if target == 0.5:
        assert 0 in dense  # the small layer hits density 1: the case that needs the re-solve
    for s, d, shape in zip(alloc.specs, density, shapes):
        assert abs((1 - s.target) - d) <= 1.0 / math.prod(shape) + 1e-9, (shape, s.target, d)
    assert alloc.pruned == round(target * analysis.total_params)
    assert [r.score for r in alloc.layers] == pytest.approx([erk_coefficient(s) for s in shapes])


def test_erk_respects_max_sparsity():
    shapes = [(4, 3), (512, 512), (64, 64)]
    specs, analysis = _layers(shapes)
    free = allocate(specs, analysis, Budget("erk"), target=0.85)
    assert free.specs[1].target > 0.86  # unconstrained ERK prunes the largest layer harder
    alloc = allocate(specs, analysis, Budget("erk", max_sparsity=0.86), target=0.85)
    assert max(s.target for s in alloc.specs) <= 0.86
    assert alloc.pruned == round(0.85 * analysis.total_params)
    assert alloc.specs[1].target == pytest.approx(0.86, abs=1e-5)  # the largest layer sits at the cap
    # and the others share the rest as ERK says: density ∝ coefficient, capped at dense
    d_small, d_mid = 1 - alloc.specs[0].target, 1 - alloc.specs[2].target
    assert d_small == 1.0 or d_small / d_mid == pytest.approx(erk_coefficient((4, 3)) / erk_coefficient((64, 64)), rel=1e-2)


# -- global -------------------------------------------------------------------------


class _Mixed(torch.nn.Module):
    """Layers of different shapes and scales reading one input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(32, 64, bias=False)
        self.b = torch.nn.Linear(64, 48, bias=False)
        self.c = torch.nn.Linear(48, 8, bias=False)
        with torch.no_grad():
            self.b.weight.mul_(3.0)
            self.c.weight.mul_(0.2)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.fixture(scope="module")
def mixed():
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    program = export_module(_Mixed(), (x,))
    analysis = find_prunable_weights(program)
    specs = [MaskSpec(w.fqn, UNSTRUCTURED, 0.5, layer=w.layer) for w in analysis.weights]
    return program, analysis, specs, x


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.floats(0.0, 0.9), normalize=st.sampled_from(["none", "rms"]))
def test_global_hits_the_target_with_one_threshold(mixed, target, normalize):
    program, analysis, specs, _ = mixed
    budget = Budget("global", normalize=normalize, max_sparsity=1.0)  # no cap: one threshold everywhere
    alloc = allocate(specs, analysis, budget, target=target, program=program)
    assert _pruned(alloc, analysis) == round(target * analysis.total_params)
    if normalize == "none":  # every pruned |w| is at most every kept |w|, across layers
        pruned_max, kept_min = -math.inf, math.inf
        for s in alloc.specs:
            w = program.state_dict[s.fqn].detach().abs()
            keep = compute_mask(w, UNSTRUCTURED, s.target, 0, 1)
            if (~keep).any():
                pruned_max = max(pruned_max, float(w[~keep].max()))
            if keep.any():
                kept_min = min(kept_min, float(w[keep].min()))
        assert pruned_max <= kept_min


@pytest.mark.parametrize("kind, unit", [("channel", 64), ("4x4", 16)])
@pytest.mark.parametrize("target", [0.3, 0.77])
def test_global_ranks_whole_units_and_lands_within_one(mixed, kind, unit, target):
    program, analysis, specs, _ = mixed
    specs = [MaskSpec(s.fqn, SparsityPattern.parse(kind), 0.5, layer=s.layer) for s in specs]
    alloc = allocate(specs, analysis, Budget("global", max_sparsity=1.0), target=target, program=program)
    assert abs(_pruned(alloc, analysis) - round(target * analysis.total_params)) < unit
    assert _pruned(alloc, analysis) == alloc.pruned


def test_global_raw_scores_prune_small_weights_first_and_rms_evens_out(mixed):
    program, analysis, specs, _ = mixed
    raw = {s.fqn: s.target for s in allocate(specs, analysis, Budget("global"), program=program).specs}
    assert raw["c.weight"] > raw["a.weight"] > raw["b.weight"]  # c was scaled by 0.2, b by 3
    rms = {s.fqn: s.target for s in allocate(specs, analysis, Budget("global", normalize="rms"), program=program).specs}
    assert max(rms.values()) - min(rms.values()) < max(raw.values()) - min(raw.values())


def test_global_with_wanda_scores_needs_stats(mixed):
    program, analysis, specs, x = mixed
    budget = Budget("global", scores="wanda")
    assert needs_stats(budget) == {"act_sq"}
    with pytest.raises(BudgetError, match="needs calibration statistics"):
        allocate(specs, analysis, budget, program=program)
    stats = collect_stats(program, CalibrationData([((x,), {})]))
    alloc = allocate(specs, analysis, budget, program=program, stats=stats, target=0.6)
    assert alloc.pruned == _pruned(alloc, analysis) == round(0.6 * analysis.total_params)


# -- OWL ------------------------------------------------------------------------------


class _Parallel(torch.nn.Module):
    """Four equal layers, each reading its own input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(64, 32, bias=False) for _ in range(4))

    def forward(self, x0, x1, x2, x3):
        return sum(layer(x) for layer, x in zip(self.layers, (x0, x1, x2, x3)))


def _owl_setup(outliers: dict[int, int]):
    """Layer i's input has ``outliers[i]`` feature columns 40x larger than the rest."""
    gen = torch.Generator().manual_seed(3)
    xs = []
    for i in range(4):
        x = torch.randn(128, 64, generator=gen)
        x[:, : outliers.get(i, 0)] *= 40.0
        xs.append(x)
    program = export_module(_Parallel(), tuple(xs))
    analysis = find_prunable_weights(program)
    stats = collect_stats(program, CalibrationData([(tuple(xs), {})]))
    specs = [MaskSpec(w.fqn, UNSTRUCTURED, 0.5, layer=w.layer) for w in analysis.weights]
    return program, analysis, stats, specs


def test_owl_gives_more_density_to_outlier_heavy_layers():
    program, analysis, stats, specs = _owl_setup({1: 6, 3: 2})
    budget = Budget("owl", lam=0.1)
    assert needs_stats(budget) == {"act_sq"} and needs_program(budget) and not needs_calibration(budget)
    alloc = allocate(specs, analysis, budget, program=program, stats=stats, target=0.5)
    s = {r.fqn: r.sparsity for r in alloc.layers}
    d = {r.fqn: r.score for r in alloc.layers}
    assert d["layers.1.weight"] > d["layers.3.weight"] > d["layers.0.weight"]
    assert s["layers.1.weight"] < s["layers.3.weight"] < s["layers.0.weight"]
    # [target - λ, target + λ] from the densest to the sparsest, then one shift for all.
    assert s["layers.0.weight"] - s["layers.1.weight"] == pytest.approx(0.2, abs=2 / (64 * 32))
    assert s["layers.0.weight"] == pytest.approx(s["layers.2.weight"], abs=2 / (64 * 32))
    assert alloc.pruned == _pruned(alloc, analysis) == round(0.5 * analysis.total_params)


def test_owl_shifts_to_the_exact_target_when_layers_differ_in_size():
    program, analysis, stats, specs = _owl_setup({2: 8})
    specs = [specs[0], specs[2]]  # one plain, one outlier-heavy
    alloc = allocate(specs, analysis, Budget("owl", lam=0.2), program=program, stats=stats, target=0.7)
    assert alloc.specs[1].target < alloc.specs[0].target
    assert alloc.pruned == _pruned(alloc, analysis) == round(0.7 * 2 * 64 * 32)


def test_owl_without_stats_names_what_is_missing():
    program, analysis, _, specs = _owl_setup({})
    with pytest.raises(BudgetError, match="wanda.*calibration statistics.*layers.0.weight"):
        allocate(specs, analysis, Budget("owl"), program=program)


# -- losses: ECoFLaP and sensitivity ------------------------------------------------------


class _TwoBranch(torch.nn.Module):
    """``loud`` feeds the output with 30x the weight of ``quiet``: it matters more."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.loud = torch.nn.Linear(24, 16, bias=False)
        self.quiet = torch.nn.Linear(24, 16, bias=False)
        self.head = torch.nn.Linear(16, 10, bias=False)

    def forward(self, x):
        return self.head(torch.tanh(3.0 * self.loud(x) + 0.1 * self.quiet(x)))


@pytest.fixture(scope="module")
def two_branch():
    model = _TwoBranch().eval()
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(5))
    program = export_module(model, (x,))
    analysis = find_prunable_weights(program)
    specs = [MaskSpec(w.fqn, UNSTRUCTURED, 0.5, layer=w.layer) for w in analysis.weights if w.fqn != "head.weight"]
    with torch.no_grad():
        reference = model(x)

    def to_dense(outputs, args, kwargs):  # squared distance to the dense model's outputs
        return (outputs - reference).square().mean()

    return program, analysis, specs, CalibrationData([((x,), {})], objective=to_dense), \
        CalibrationData([((x,), {})], objective="self_ce")


def test_ecoflap_keeps_more_of_the_layer_with_the_larger_zeroth_order_score(two_branch):
    program, analysis, specs, _, ce = two_branch
    budget = Budget("ecoflap", samples=4, granularity="layer")
    assert needs_calibration(budget) and not needs_stats(budget)
    alloc = allocate(specs, analysis, budget, program=program, calibration=ce, target=0.5)
    rows = {r.fqn: r for r in alloc.layers}
    assert rows["loud.weight"].score > 5 * rows["quiet.weight"].score
    assert rows["loud.weight"].sparsity < rows["quiet.weight"].sparsity
    cap = budget.cap(0.5)
    assert cap == pytest.approx(0.6)
    assert all(r.sparsity <= cap + 1e-12 for r in alloc.layers)
    # Each layer keeps (1 - cap) of itself, and the rest of the kept weights by score.
    extra = 0.1 * 2 * 24 * 16
    total_score = sum(r.score for r in alloc.layers)
    for r in alloc.layers:
        assert (cap - r.sparsity) * r.params == pytest.approx(extra * r.score / total_score, abs=1.0)
    assert alloc.pruned == _pruned(alloc, analysis) == round(0.5 * 2 * 24 * 16)


def test_ecoflap_allocation_follows_the_scores_with_a_custom_cap(two_branch):
    program, analysis, specs, _, ce = two_branch
    calls = []

    def loss(program_, data, overrides, max_batches):  # the loss sparsify uses, counted
        calls.append(sorted(overrides or {}))
        return objective_loss(program_, data, overrides, max_batches)

    budget = Budget("ecoflap", samples=2, granularity="layer", max_sparsity=0.8)
    alloc = allocate(specs, analysis, budget, program=program, calibration=ce, target=0.6, loss=loss)
    assert len(calls) == 2 * 2 * len(specs)  # two forward passes per layer and draw
    order_by_score = sorted(alloc.layers, key=lambda r: r.score)
    sparsities = [r.sparsity for r in order_by_score]
    assert sparsities == sorted(sparsities, reverse=True)
    assert max(sparsities) <= 0.8


def test_sensitivity_sweep_ranks_the_layer_that_matters_more(two_branch, tmp_path):
    program, analysis, specs, mse, _ = two_branch
    table = sensitivity_sweep(program, specs, analysis, mse, levels=(0.25, 0.5, 0.75))
    assert table.base_loss == pytest.approx(0.0, abs=1e-10)
    for fqn in table.delta:
        assert list(table.delta[fqn]) == sorted(table.delta[fqn])  # more pruning, more loss
    assert all(a > b for a, b in zip(table.delta["loud.weight"], table.delta["quiet.weight"]))

    path = tmp_path / "sens.json"
    table.save(path)
    assert SensitivityTable.load(path) == table
    budget = parse_budget({"method": "sensitivity", "table": str(path)})
    assert not needs_calibration(budget) and not needs_program(budget)
    alloc = allocate(specs, analysis, budget, target=0.5)
    rows = {r.fqn: r for r in alloc.layers}
    assert rows["loud.weight"].sparsity < 0.5 < rows["quiet.weight"].sparsity
    assert rows["quiet.weight"].sparsity == pytest.approx(0.75, abs=1e-3)  # filled to the largest level
    assert alloc.pruned == round(0.5 * 2 * 24 * 16)

    computed = allocate(specs, analysis, Budget("sensitivity", levels=(0.25, 0.5, 0.75)), program=program,
                        calibration=mse, target=0.5)
    assert [s.target for s in computed.specs] == [s.target for s in alloc.specs]


def test_sensitivity_cannot_go_beyond_its_largest_level(tmp_path):
    specs, analysis = _layers([(4, 4), (8, 8)])
    table = SensitivityTable((0.5,), 1.0, {s.fqn: (0.1,) for s in specs})
    table.save(tmp_path / "t.json")
    with pytest.raises(BudgetError, match="largest measured level 0.5"):
        allocate(specs, analysis, Budget("sensitivity", table=str(tmp_path / "t.json")), target=0.6)


def test_sensitivity_table_missing_a_layer(tmp_path):
    specs, analysis = _layers([(4, 4), (8, 8)])
    SensitivityTable((0.5,), 1.0, {specs[0].fqn: (0.1,)}).save(tmp_path / "t.json")
    with pytest.raises(BudgetError, match="no row for layers.1.weight"):
        allocate(specs, analysis, Budget("sensitivity", table=str(tmp_path / "t.json")), target=0.4)


class _Branches(torch.nn.Module):
    """Parallel linear layers of the given shapes, each reading its own input."""

    def __init__(self, shapes):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(k, n, bias=False) for n, k in shapes)

    def forward(self, *xs):
        return torch.cat([layer(x) for layer, x in zip(self.layers, xs)], dim=-1)


@settings(max_examples=6, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=4),
       target=st.floats(0.0, 0.9), seed=st.integers(0, 1000))
def test_calibrated_methods_hit_the_target_exactly(shapes, target, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xs = tuple(torch.randn(8, k, generator=gen) * torch.rand(k, generator=gen) * 10 for _, k in shapes)
    program = export_module(_Branches(shapes), xs)
    analysis = find_prunable_weights(program)
    data = CalibrationData([(xs, {})], objective="self_ce")
    stats = collect_stats(program, data)
    specs = [MaskSpec(w.fqn, UNSTRUCTURED, 0.5, layer=w.layer) for w in analysis.weights]
    want = round(target * analysis.total_params)
    for budget in (Budget("global", scores="wanda", max_sparsity=1.0), Budget("owl", lam=0.2, granularity="layer"),
                   Budget("ecoflap", max_sparsity=min(1.0, target + 0.2), granularity="layer"),
                   Budget("sensitivity", levels=(0.5, 1.0))):
        alloc = allocate(specs, analysis, budget, target=target, program=program, stats=stats, calibration=data)
        assert _pruned(alloc, analysis) == alloc.pruned == want, budget.method


# -- what is left out, and errors ---------------------------------------------------


def test_nm_layers_keep_their_sparsity_and_the_rest_meet_the_target():
    specs, analysis = _layers([(8, 16), (32, 32), (16, 8)])
    specs[1] = MaskSpec(specs[1].fqn, SparsityPattern.n_m(2, 4), 0.5)
    alloc = allocate(specs, analysis, Budget("erk"), target=0.7)
    assert alloc.specs[1] == specs[1]
    assert alloc.layers[1].fixed == "N:M pattern 2:4 has a fixed sparsity"
    assert alloc.params == 8 * 16 + 16 * 8
    assert alloc.pruned == round(0.7 * alloc.params)


def test_only_nm_layers_is_an_error():
    specs, analysis = _layers([(8, 16)], SparsityPattern.n_m(2, 4))
    with pytest.raises(BudgetError, match="no layer left to re-allocate.*N:M pattern 2:4"):
        allocate(specs, analysis, Budget("erk"))


def test_override_sparsity_is_kept_and_the_target_defaults_to_the_recipe():
    weights = [_weight("enc.0.q.weight", (16, 16)), _weight("enc.0.k.weight", (16, 16)), _weight("head.weight", (4, 16))]
    recipe = load_recipe({"pattern": "unstructured", "sparsity": 0.6, "budget": "erk",
                          "overrides": [{"match": "head.weight", "sparsity": 0.1}]})
    plan = plan_masks(recipe, Analysis(weights=weights))
    assert plan.fixed == {"head.weight"}
    alloc = allocate(plan, Analysis(weights=weights), recipe.budget)
    assert alloc.target == 0.6
    assert alloc.specs[2].target == 0.1 and alloc.layers[2].fixed == "sparsity set by an override"
    assert alloc.pruned == round(0.6 * 2 * 256)


def test_impossible_target_names_the_values():
    specs, analysis = _layers([(8, 8), (16, 16)])
    with pytest.raises(BudgetError, match=r"target sparsity 0.9 .*\[0, 0.8\].*max_sparsity"):
        allocate(specs, analysis, Budget("uniform", max_sparsity=0.8), target=0.9)
    with pytest.raises(BudgetError, match=r"target sparsity 0.1 .*\[0.3, 1\]"):
        allocate(specs, analysis, Budget("erk", min_sparsity=0.3), target=0.1)


def test_weight_methods_need_the_program():
    specs, analysis = _layers([(8, 8)])
    with pytest.raises(BudgetError, match="'global' reads the weights: pass program="):
        allocate(specs, analysis, Budget("global"))
    with pytest.raises(BudgetError, match="'ecoflap' runs the calibration loss: pass calibration="):
        allocate(specs, analysis, Budget("ecoflap"))


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, key, fragment",
    [
        ("magnitude", "budget.method", "'magnitude' is not a known budget method; known: uniform, global, erk"),
        ({"method": "owl", "lambda": 1.5}, "budget.lambda", "1.5 is outside [0, 1]"),
        ({"method": "owl", "m": 0}, "budget.m", "0 is outside (0, inf]"),
        ({"method": "erk", "lambda": 0.1}, "budget.lambda", "does not apply to budget method 'erk'; its options:"),
        ({"method": "erk", "max_sparsity": 0}, "budget.max_sparsity", "0 is outside (0, 1]"),
        ({"method": "erk", "max_sparsity": "high"}, "budget.max_sparsity", "'high' must be a number"),
        ({"method": "global", "scores": "sparsegpt"}, "budget.scores", "is not a criterion that scores entries"),
        ({"method": "global", "normalize": "l1"}, "budget.normalize", "must be one of: none, rms"),
        ({"method": "sensitivity", "levels": []}, "budget.levels", "must be a non-empty list"),
        ({"method": "sensitivity", "levels": [0.5, 1.5]}, "budget.levels", "1.5 is outside (0, 1]"),
        ({"method": "ecoflap", "samples": 0}, "budget.samples", "must be an integer >= 1"),
        ({"method": "ecoflap", "eps": -1e-3}, "budget.eps", "is outside (0, 1]"),
        ({"method": "erk", "speed": 1}, "budget.speed", "is not a known key"),
        ({"method": "erk", "min_sparsity": 0.5, "max_sparsity": 0.4}, "budget.min_sparsity", "is above"),
        (3, "budget", "must be a method name"),
    ],
)
def test_bad_budgets_name_the_key_and_value(value, key, fragment):
    with pytest.raises(RecipeError) as e:
        load_recipe({"pattern": "unstructured", "sparsity": 0.5, "budget": value})
    assert e.value.key == key
    assert fragment in str(e.value)


def test_recipe_budget_forms_and_round_trip():
    r = load_recipe("pattern: unstructured\nsparsity: 0.5\nbudget: erk\n")
    assert r.budget == Budget("erk")
    r = load_recipe({"pattern": "unstructured", "sparsity": 0.5,
                     "budget": {"method": "owl", "lambda": 0.1, "m": 7, "max_sparsity": 0.9}})
    assert r.budget == Budget("owl", lam=0.1, outlier_m=7.0, max_sparsity=0.9)
    assert r.to_dict()["budget"] == {"method": "owl", "max_sparsity": 0.9, "m": 7.0, "lambda": 0.1}
    assert load_recipe(yaml.safe_dump(r.to_dict())) == r
    plain = load_recipe({"pattern": "2:4"})
    assert plain.budget == Budget() and "budget" not in plain.to_dict()
    assert load_recipe("pattern: unstructured\nsparsity: 0.5\nbudget:\n").budget == Budget()
    s = load_recipe({"pattern": "unstructured", "sparsity": 0.5,
                     "budget": {"method": "sensitivity", "levels": [0.9, 0.2, 0.5]}})
    assert s.budget.levels == (0.2, 0.5, 0.9)


def test_block_of_groups_numbered_modules():
    assert block_of("model.layers.3.self_attn.q_proj.weight") == "model.layers.3"
    assert block_of("encoder.layer.0.attention.self.query.weight") == "encoder.layer.0"
    assert block_of("lm_head.weight") == "lm_head"


def test_report_figures():
    specs, analysis = _layers([(8, 8), (16, 16)])
    d = allocate(specs, analysis, Budget("erk"), target=0.5).to_dict()
    assert d["budget"] == {"method": "erk"} and d["target_pruned"] == d["pruned"] == 160
    assert [x["fqn"] for x in d["layers"]] == ["layers.0.weight", "layers.1.weight"]
    assert np.isclose(sum(x["pruned_params"] for x in d["layers"]), 160)


# -- command line -------------------------------------------------------------------------


def test_sensitivity_command_writes_a_table_the_budget_reads(tmp_path):
    from typer.testing import CliRunner

    from sparsecc.cli import app

    out = tmp_path / "mlp.json"
    args = ["sensitivity", "mlp", "--out", str(out), "--levels", "0.5,0.9", "--samples", "2"]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    table = SensitivityTable.load(out)
    assert table.levels == (0.5, 0.9) and set(table.delta) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert "use it with `budget: {method: sensitivity, table:" in " ".join(r.output.split())
    again = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert again.exit_code == 2 and "exists; pass --force" in again.output  # usage errors exit 2
    bad = CliRunner().invoke(app, ["sensitivity", "mlp", "--out", str(tmp_path / "x.json"), "--levels", "0.5,1.5"],
                             env={"COLUMNS": "400"})
    assert bad.exit_code == 2 and "--levels: 1.5 is outside (0, 1]" in bad.output


@pytest.mark.parametrize("budget", ["erk", {"method": "owl", "m": 2}, {"method": "global", "scores": "wanda"}])
def test_sparsify_with_a_budget_prunes_exactly_the_target(budget):
    from sparsecc.flows.sparsify import sparsify

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.ReLU(), torch.nn.Linear(65, 17), torch.nn.ReLU(),
                                torch.nn.Linear(17, 10))
    program = export_module(model, (torch.randn(8, 33, generator=gen),))
    data = CalibrationData([((torch.randn(8, 33, generator=gen),), {}) for _ in range(2)])
    recipe = {"pattern": "unstructured", "sparsity": 0.6, "criterion": "wanda", "budget": budget,
              "calibration": {"sequential": False}}
    result = sparsify(program, recipe, calibration=data)
    report = result.report
    assert report.zero_params == round(0.6 * report.prunable_params) == round(0.6 * (33 * 65 + 65 * 17 + 17 * 10))
    assert len({round(r.achieved, 6) for r in report.rows}) > 1  # the layers really differ
