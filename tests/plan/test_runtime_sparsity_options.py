"""The ``activations:`` and ``attention:`` recipe sections: parsing, defaults, round trip, named errors."""

from __future__ import annotations

import pytest

from sparsecc.plan.recipe import RecipeError, load_recipe
from sparsecc.plan.runtime_sparsity_options import ActivationOptions, AttentionOptions


def test_sections_parse_with_defaults_and_round_trip():
    rec = load_recipe({"pattern": "2:4", "activations": {"sparsity": 0.4, "allocation": "greedy"},
                       "attention": {"tau": 0.9, "sink": True}})
    assert rec.activations == ActivationOptions(0.4, "greedy")
    assert rec.attention == AttentionOptions(tau=0.9, sink=True)
    assert rec.weights_pruned
    again = load_recipe(rec.to_dict())
    assert again == rec


def test_a_number_is_shorthand_for_the_activation_sparsity():
    assert load_recipe({"pattern": "2:4", "activations": 0.5}).activations == ActivationOptions(0.5)


def test_runtime_only_recipe_prunes_no_weights_and_round_trips():
    rec = load_recipe("activations: {exact: true}\nattention: {block: 32}\n")
    assert not rec.weights_pruned and rec.sparsity == 0.0
    assert rec.activations.exact and not rec.activations.needs_calibration
    d = rec.to_dict()
    assert d["pattern"] == "none" and "sparsity" not in d
    assert load_recipe(d) == rec
    assert load_recipe({"pattern": "none", "activations": 0.3}).activations.sparsity == 0.3
    with pytest.raises(RecipeError, match="pattern.*prunes no weights"):
        load_recipe({"pattern": "none"})


@pytest.mark.parametrize("section, key, value", [
    ("activations", "sparsity", 1.0),
    ("activations", "sparsity", -0.1),
    ("activations", "sparsity", True),
    ("activations", "allocation", "owl"),
    ("activations", "exact", "yes"),
    ("activations", "layers", [3]),
    ("activations", "threshold", 0.1),
    ("attention", "block", 12),
    ("attention", "block", 1024),
    ("attention", "tau", 0.0),
    ("attention", "tau", 1.5),
    ("attention", "reuse", -1),
    ("attention", "sink", 1),
])
def test_bad_values_name_their_key(section, key, value):
    base = {"sparsity": 0.4} if section == "activations" and key != "sparsity" else {}
    with pytest.raises(RecipeError, match=rf"{section}\.{key}"):
        load_recipe({"pattern": "2:4", section: {**base, key: value}})


def test_an_activation_section_that_does_nothing_is_refused():
    with pytest.raises(RecipeError, match="would do nothing"):
        load_recipe({"pattern": "2:4", "activations": {"sparsity": 0}})


def test_weight_keys_without_a_pattern_still_need_one():
    with pytest.raises(RecipeError, match="pattern"):
        load_recipe({"sparsity": 0.5, "activations": 0.4})
    with pytest.raises(RecipeError, match="pattern.*criterion"):
        load_recipe({"criterion": "wanda", "attention": {}})
    with pytest.raises(RecipeError, match="pattern"):
        load_recipe({"criterion": "wanda"})
