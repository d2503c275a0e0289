"""Recipes: loading, validation errors that name key and value, and planning on a real analysis."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsecc
from sparsecc.core.ir import SparsityPattern
from sparsecc.plan.recipe import LayerSelection, Override, Recipe, RecipeError, load_recipe, plan_masks


# -- models -------------------------------------------------------------------------


class Net(nn.Module):
    """stem (conv) -> blocks.0 -> blocks.1 -> head, registered in another order.

    ``head`` is registered first, so the parameter order of the program differs
    from execution order, which is what skip_first / skip_last must use.
    Weights as [out, reduction]: stem [8, 4*3*3] (288 params), blocks.i [8, 8]
    (64), head [6, 8] (48). A 4x4 block fits everything but ``head`` (6 rows).
    """

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 6)
        self.stem = nn.Conv2d(4, 8, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).mean((2, 3))
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.head(x)


class TiedLM(nn.Module):
    """An embedding whose weight is also the lm_head's (tied)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.fc = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 16, bias=False)
        self.lm_head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.fc(self.emb(ids))))


@pytest.fixture(scope="module")
def analysis():
    torch.manual_seed(0)
    program = sparsecc.capture(Net(), (torch.randn(2, 4, 5, 5),))
    a = sparsecc.find_prunable_weights(program)
    # The fixture's premise: four weights, in execution order.
    assert [w.layer for w in a.weights] == ["stem", "blocks.0", "blocks.1", "head"]
    return a


@pytest.fixture(scope="module")
def tied_analysis():
    torch.manual_seed(0)
    program = sparsecc.capture(TiedLM(), (torch.randint(0, 16, (2, 4)),))
    a = sparsecc.find_prunable_weights(program)
    assert a.by_fqn()["lm_head.weight"].tied
    return a


def _plan(recipe: dict, analysis):
    return plan_masks(load_recipe(recipe), analysis)


def _specs(plan) -> dict[str, sparsecc.MaskSpec]:
    return {s.fqn: s for s in plan.specs}


# -- loading --------------------------------------------------------------------------

RECIPE_YAML = """\
pattern: "2:4"
criterion: random
layers:
  exclude: ["head", "re:blocks\\\\.1"]
  min_params: 16
  skip_first: 1
incompatible: error
overrides:
  - match: "blocks.*"
    pattern: unstructured
    sparsity: 0.25
"""

EXPECTED = Recipe(
    pattern=SparsityPattern.n_m(2, 4),
    sparsity=0.5,
    criterion="random",
    layers=LayerSelection(exclude=("head", r"re:blocks\.1"), min_params=16, skip_first=1),
    incompatible="error",
    overrides=(Override(match=("blocks.*",), pattern=SparsityPattern.unstructured(), sparsity=0.25),),
)


def test_load_recipe_from_yaml_file(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE_YAML)
    assert load_recipe(path) == EXPECTED
    assert load_recipe(str(path)) == EXPECTED


def test_load_recipe_from_yaml_string():
    assert load_recipe(RECIPE_YAML) == EXPECTED


def test_load_recipe_from_dict():
    assert load_recipe(yaml.safe_load(RECIPE_YAML)) == EXPECTED


def test_load_recipe_returns_a_recipe_unchanged():
    assert load_recipe(EXPECTED) is EXPECTED


def test_defaults():
    r = load_recipe({"pattern": "unstructured", "sparsity": 0.4})
    assert r.sparsity == 0.4
    assert r.criterion == "magnitude"
    assert r.incompatible == "skip"
    assert r.layers == LayerSelection()
    assert r.overrides == ()


def test_nm_pattern_implies_its_sparsity():
    assert load_recipe({"pattern": "2:4"}).sparsity == pytest.approx(0.5, rel=1e-12)
    assert load_recipe({"pattern": "1:4"}).sparsity == pytest.approx(0.75, rel=1e-12)


def test_missing_recipe_file_names_the_path(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_recipe(missing)


def test_unquoted_nm_pattern_in_yaml_means_n_m():
    # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124; a recipe
    # written the way the pattern is spelled everywhere else must still mean 2:4.
    r = load_recipe("pattern: 2:4\ncriterion: magnitude\n")
    assert r.pattern == SparsityPattern.n_m(2, 4)


# -- validation errors: each names the key and the value --------------------------------


def _error(source) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(source)
    return info.value


def _assert_names(err: RecipeError, key: str, value) -> None:
    assert err.key == key
    assert err.value == value
    msg = str(err)
    assert f"'{key}'" in msg, msg
    assert repr(value) in msg, msg


@pytest.mark.parametrize("value", [1.2, -0.1, 1.0, 5])
def test_sparsity_outside_unit_interval(value):
    err = _error({"pattern": "unstructured", "sparsity": value})
    _assert_names(err, "sparsity", value)
    assert "[0, 1)" in str(err)


@pytest.mark.parametrize("value", ["half", "50%", True, [0.5]])
def test_sparsity_not_a_number(value):
    err = _error({"pattern": "unstructured", "sparsity": value})
    _assert_names(err, "sparsity", value)
    assert "number" in str(err)


def test_sparsity_error_from_yaml_text_names_key_and_value():
    err = _error("pattern: unstructured\nsparsity: 1.2\n")
    _assert_names(err, "sparsity", 1.2)


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_sparsity_accepted_exactly_in_unit_interval(s):
    if 0.0 <= s < 1.0:
        assert load_recipe({"pattern": "unstructured", "sparsity": s}).sparsity == s
    else:
        with pytest.raises(RecipeError) as info:
            load_recipe({"pattern": "unstructured", "sparsity": s})
        assert info.value.key == "sparsity"


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4"])
def test_nm_needs_n_below_m(text):
    err = _error({"pattern": text})
    _assert_names(err, "pattern", text)
    assert "0 < N < M" in str(err)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40))
def test_nm_accepted_iff_n_below_m(n, m):
    if 0 < n < m:
        r = load_recipe({"pattern": f"{n}:{m}"})
        assert r.pattern == SparsityPattern.n_m(n, m)
        assert math.isclose(r.sparsity, 1 - n / m, rel_tol=1e-12)
    else:
        with pytest.raises(RecipeError) as info:
            load_recipe({"pattern": f"{n}:{m}"})
        assert info.value.key == "pattern" and info.value.value == f"{n}:{m}"


@pytest.mark.parametrize("text", ["diagonal", "2-4", "8x", "0x4"])
def test_unknown_pattern(text):
    err = _error({"pattern": text})
    _assert_names(err, "pattern", text)


def test_unknown_criterion_lists_known_ones():
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "criterion": "no-such-criterion"})
    _assert_names(err, "criterion", "no-such-criterion")
    assert "magnitude" in str(err)


def test_unknown_top_level_key():
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "sparsty": 0.5})
    _assert_names(err, "sparsty", 0.5)
    assert "sparsity" in str(err)  # the known keys are listed


def test_unknown_layers_key():
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "layers": {"min_param": 10}})
    _assert_names(err, "layers.min_param", 10)
    assert "min_params" in str(err)


def test_unknown_override_key():
    overrides = [{"match": "fc", "sparsity": 0.3, "skipp": True}]
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "overrides": overrides})
    _assert_names(err, "overrides[0].skipp", True)


def test_override_without_match():
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "overrides": [{"match": "a"}, {"sparsity": 0.3}]})
    assert err.key == "overrides[1].match"
    assert "overrides[1].match" in str(err)


def test_override_sparsity_outside_unit_interval():
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "overrides": [{"match": "fc", "sparsity": 1.5}]})
    _assert_names(err, "overrides[0].sparsity", 1.5)


@pytest.mark.parametrize("value", [0.7, 0.0])
def test_sparsity_contradicting_nm(value):
    err = _error({"pattern": "2:4", "sparsity": value})
    _assert_names(err, "sparsity", value)
    assert "2:4" in str(err)


def test_override_sparsity_contradicting_inherited_nm():
    err = _error({"pattern": "2:4", "overrides": [{"match": "fc", "sparsity": 0.3}]})
    _assert_names(err, "overrides[0].sparsity", 0.3)
    assert "2:4" in str(err)


@pytest.mark.parametrize("pattern", ["unstructured", "channel", "8x8"])
def test_sparsity_required_unless_the_pattern_implies_it(pattern):
    err = _error({"pattern": pattern})
    assert err.key == "sparsity"
    assert "'sparsity'" in str(err) and pattern in str(err)


def test_missing_pattern():
    err = _error({"sparsity": 0.5})
    assert err.key == "pattern"
    assert "'pattern'" in str(err) and "required" in str(err)


@pytest.mark.parametrize("where", ["include", "exclude"])
def test_invalid_regex_selector(where):
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "layers": {where: ["fc*", "re:fc(["]}})
    _assert_names(err, f"layers.{where}", "re:fc([")
    assert "regex" in str(err)


def test_invalid_regex_in_override_match():
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "overrides": [{"match": "re:(", "sparsity": 0.3}]})
    _assert_names(err, "overrides[0].match", "re:(")


@pytest.mark.parametrize("value", ["warn", "ignore", True])
def test_incompatible_must_be_skip_or_error(value):
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "incompatible": value})
    _assert_names(err, "incompatible", value)
    assert "skip" in str(err) and "error" in str(err)


@pytest.mark.parametrize("key,value", [("min_params", -1), ("skip_first", 1.5), ("skip_last", "2")])
def test_layer_counts_must_be_non_negative_ints(key, value):
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "layers": {key: value}})
    _assert_names(err, f"layers.{key}", value)


def test_include_tied_must_be_bool():
    err = _error({"pattern": "unstructured", "sparsity": 0.5, "layers": {"include_tied": "yes"}})
    _assert_names(err, "layers.include_tied", "yes")


def test_root_must_be_a_mapping():
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe("- pattern: unstructured\n- sparsity: 0.5\n")


# -- round trip -----------------------------------------------------------------------


def test_to_dict_round_trips():
    assert load_recipe(EXPECTED.to_dict()) == EXPECTED


def test_to_dict_round_trips_through_yaml_with_skip_override():
    r = load_recipe({
        "pattern": "4x4", "sparsity": 0.3, "layers": {"include_tied": True, "skip_last": 2},
        "overrides": [{"match": ["stem", "re:x.*"], "skip": True}, {"match": "head", "pattern": "1:4"}],
    })
    assert load_recipe(yaml.safe_dump(r.to_dict())) == r


_patterns = st.one_of(
    st.just("unstructured"),
    st.just("channel"),
    st.tuples(st.integers(1, 8), st.integers(2, 16)).filter(lambda t: t[0] < t[1]).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(st.integers(1, 16), st.integers(1, 16)).map(lambda t: f"{t[0]}x{t[1]}"),
)
_sparsity = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)
_selectors = st.lists(st.sampled_from(["*", "fc*", "stem", r"re:blocks\.\d+", "head"]), min_size=1, max_size=3)


@st.composite
def _recipes(draw):
    d = {"pattern": draw(_patterns), "criterion": draw(st.sampled_from(["magnitude", "random"]))}
    if ":" not in d["pattern"]:
        d["sparsity"] = draw(_sparsity)
    d["layers"] = {
        "include": draw(_selectors),
        "exclude": draw(st.lists(st.sampled_from(["head", "re:x"]), max_size=2)),
        "min_params": draw(st.integers(0, 10_000)),
        "skip_first": draw(st.integers(0, 3)),
        "skip_last": draw(st.integers(0, 3)),
        "include_tied": draw(st.booleans()),
    }
    d["incompatible"] = draw(st.sampled_from(["skip", "error"]))
    overrides = []
    for _ in range(draw(st.integers(0, 3))):
        o = {"match": draw(_selectors)}
        if draw(st.booleans()):
            o["skip"] = True
        else:
            o["pattern"] = draw(_patterns)
            if ":" not in o["pattern"]:
                o["sparsity"] = draw(_sparsity)
        overrides.append(o)
    if overrides:
        d["overrides"] = overrides
    return d


@settings(max_examples=50, deadline=None)
@given(_recipes())
def test_to_dict_round_trip_property(d):
    r = load_recipe(d)
    assert load_recipe(r.to_dict()) == r
    assert load_recipe(yaml.safe_dump(r.to_dict(), sort_keys=False)) == r


# -- planning ---------------------------------------------------------------------------


def test_plan_all_layers(analysis):
    plan = _plan({"pattern": "unstructured", "sparsity": 0.3, "criterion": "random"}, analysis)
    specs = _specs(plan)
    assert list(specs) == ["stem.weight", "blocks.0.weight", "blocks.1.weight", "head.weight"]
    for w in analysis.weights:
        s = specs[w.fqn]
        assert (s.pattern, s.target, s.criterion, s.layer) == (SparsityPattern.unstructured(), 0.3, "random", w.layer)
        assert s.achieved is None
    assert plan.skipped == {}


@pytest.mark.parametrize(
    "layers,key,selector",
    [
        ({"include": ["stem", "nothing*"]}, "layers.include", "nothing*"),
        ({"exclude": ["re:zzz.*"]}, "layers.exclude", "re:zzz.*"),
    ],
)
def test_selector_matching_no_layer(analysis, layers, key, selector):
    with pytest.raises(RecipeError) as info:
        _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": layers}, analysis)
    _assert_names(info.value, key, selector)
    assert "stem" in str(info.value)  # lists the layers there are


def test_override_matching_no_layer(analysis):
    recipe = {"pattern": "unstructured", "sparsity": 0.5, "overrides": [{"match": "stem", "skip": True},
                                                       {"match": ["head", "encoder.*"], "skip": True}]}
    with pytest.raises(RecipeError) as info:
        _plan(recipe, analysis)
    _assert_names(info.value, "overrides[1].match", "encoder.*")


def test_block_that_does_not_divide_is_skipped_with_reason(analysis):
    plan = _plan({"pattern": "4x4", "sparsity": 0.5}, analysis)
    assert set(_specs(plan)) == {"stem.weight", "blocks.0.weight", "blocks.1.weight"}
    reason = plan.skipped["head.weight"]
    assert "4x4" in reason and "does not fit" in reason and "[6, 8]" in reason


def test_block_that_does_not_divide_with_incompatible_error(analysis):
    with pytest.raises(RecipeError) as info:
        _plan({"pattern": "4x4", "sparsity": 0.5, "incompatible": "error"}, analysis)
    err = info.value
    assert err.key == "pattern" and err.value == "4x4"
    assert "layer head" in str(err) and "head.weight" in str(err)


def test_nm_that_does_not_divide_with_incompatible_error(analysis):
    # stem's reduction axis has 4 input channels: 8:16 cannot fit.
    with pytest.raises(RecipeError) as info:
        _plan({"pattern": "8:16", "incompatible": "error"}, analysis)
    assert "layer stem" in str(info.value)
    assert "K=4" in str(info.value)


def test_override_pattern_that_does_not_fit_is_an_error_even_with_skip(analysis):
    recipe = {"pattern": "unstructured", "sparsity": 0.5, "incompatible": "skip",
              "overrides": [{"match": "stem", "sparsity": 0.2}, {"match": "head", "pattern": "4x4", "sparsity": 0.5}]}
    with pytest.raises(RecipeError) as info:
        _plan(recipe, analysis)
    err = info.value
    assert err.key == "overrides[1].pattern"
    assert "'overrides[1].pattern'" in str(err) and "layer head" in str(err)


def test_no_layer_left_is_an_error(analysis):
    with pytest.raises(RecipeError) as info:
        _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": {"min_params": 10_000}}, analysis)
    assert "selects no layer" in str(info.value)
    assert "min_params" in str(info.value)


def test_min_params(analysis):
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": {"min_params": 64}}, analysis)
    assert set(_specs(plan)) == {"stem.weight", "blocks.0.weight", "blocks.1.weight"}
    assert plan.skipped == {"head.weight": "48 params < layers.min_params=64"}


def test_skip_first_and_last_follow_execution_order(analysis):
    # head is the first parameter of the program but the last layer to run.
    layers = {"skip_first": 1, "skip_last": 1}
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": layers}, analysis)
    assert list(_specs(plan)) == ["blocks.0.weight", "blocks.1.weight"]
    assert "skip_first" in plan.skipped["stem.weight"]
    assert "skip_last" in plan.skipped["head.weight"]


def test_skip_first_two(analysis):
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": {"skip_first": 2}}, analysis)
    assert list(_specs(plan)) == ["blocks.1.weight", "head.weight"]


def test_exclude_glob(analysis):
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": {"exclude": ["blocks.*"]}}, analysis)
    assert list(_specs(plan)) == ["stem.weight", "head.weight"]
    assert plan.skipped["blocks.0.weight"] == "matched by layers.exclude"
    assert plan.skipped["blocks.1.weight"] == "matched by layers.exclude"


def test_exclude_regex_is_a_full_match(analysis):
    layers = {"exclude": [r"re:blocks\.1", "re:st.m"]}
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": layers}, analysis)
    assert list(_specs(plan)) == ["blocks.0.weight", "head.weight"]


def test_exclude_matches_weight_fqn(analysis):
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": {"exclude": ["head.weight"]}}, analysis)
    assert "head.weight" not in _specs(plan)


def test_include_selects_only_matches(analysis):
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": {"include": [r"re:blocks\.\d"]}}, analysis)
    assert list(_specs(plan)) == ["blocks.0.weight", "blocks.1.weight"]
    assert plan.skipped["stem.weight"] == "not matched by layers.include"


def test_override_first_match_wins(analysis):
    recipe = {"pattern": "unstructured", "sparsity": 0.5, "overrides": [
        {"match": "blocks.*", "sparsity": 0.3},
        {"match": "blocks.0", "sparsity": 0.9},
    ]}
    specs = _specs(_plan(recipe, analysis))
    assert specs["blocks.0.weight"].target == 0.3
    assert specs["blocks.1.weight"].target == 0.3
    assert specs["stem.weight"].target == 0.5
    assert specs["head.weight"].target == 0.5


def test_override_skip(analysis):
    overrides = [{"match": "stem", "skip": True}]
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5, "overrides": overrides}, analysis)
    assert "stem.weight" not in _specs(plan)
    assert "override" in plan.skipped["stem.weight"]


def test_override_per_layer_pattern_sparsity_and_criterion(analysis):
    recipe = {"pattern": "unstructured", "sparsity": 0.6, "overrides": [
        {"match": "stem", "pattern": "2:4"},
        {"match": "head", "pattern": "channel", "sparsity": 0.5, "criterion": "random"},
        {"match": "blocks.1", "sparsity": 0.1},
    ]}
    specs = _specs(_plan(recipe, analysis))
    assert (specs["stem.weight"].pattern, specs["stem.weight"].target) == (SparsityPattern.n_m(2, 4), 0.5)
    head = specs["head.weight"]
    assert (head.pattern, head.target, head.criterion) == (SparsityPattern.channel(), 0.5, "random")
    assert (specs["blocks.1.weight"].pattern, specs["blocks.1.weight"].target) == (SparsityPattern.unstructured(), 0.1)
    assert (specs["blocks.0.weight"].target, specs["blocks.0.weight"].criterion) == (0.6, "magnitude")


def test_tied_weight_is_skipped_by_default(tied_analysis):
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5}, tied_analysis)
    assert list(_specs(plan)) == ["fc.weight"]
    reason = plan.skipped["lm_head.weight"]
    assert "tied" in reason and "embedding" in reason and "include_tied" in reason


def test_tied_weight_included_when_asked(tied_analysis):
    plan = _plan({"pattern": "unstructured", "sparsity": 0.5, "layers": {"include_tied": True}}, tied_analysis)
    assert list(_specs(plan)) == ["fc.weight", "lm_head.weight"]
    assert plan.skipped == {}


def test_plan_on_program_without_prunable_layers():
    with pytest.raises(RecipeError, match="no prunable layer"):
        plan_masks(load_recipe({"pattern": "unstructured", "sparsity": 0.5}), sparsecc.Analysis())


def test_overrides_do_not_reselect_layers_left_dense_by_layers_rules(analysis, tied_analysis):
    plan = _plan(
        {"pattern": "unstructured", "sparsity": 0.5, "layers": {"exclude": ["head"], "skip_first": 1},
         "overrides": [{"match": "*", "sparsity": 0.3}]},
        analysis,
    )
    assert set(_specs(plan)) == {"blocks.0.weight", "blocks.1.weight"}
    assert {s.target for s in plan.specs} == {0.3}
    assert "layers.exclude" in plan.skipped["head.weight"]
    assert "skip_first" in plan.skipped["stem.weight"]
    tied = _plan({"pattern": "unstructured", "sparsity": 0.5, "overrides": [{"match": "*", "sparsity": 0.3}]},
                 tied_analysis)
    assert "lm_head.weight" not in _specs(tied)
