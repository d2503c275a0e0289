"""End-to-end parity for every zoo model: capture -> sparsify -> fold.

The masked program must equal the eager model with the same masks applied
to its weights, and the folded program must equal the masked one (fp32:
1e-5 relative; 1e-6 absolute for outputs near zero).
"""

import copy

import pytest
import torch

from sparsecc import mask_specs, sparsify
from sparsecc.models import PRETRAINED_MODELS, REFERENCE_MODELS
from sparsecc.passes import FoldMasksPass
from sparsecc.verify.verify_sparsity import VerifySparsityPass
from sparsecc.testing import assert_close_tree

RTOL, ATOL = 1e-5, 1e-6

RECIPES = {
    "2:4": {"pattern": "2:4"},
    "unstructured50": {"pattern": "unstructured", "sparsity": 0.5},
    "block4x4": {"pattern": "4x4", "sparsity": 0.5},
    "channel25": {"pattern": "channel", "sparsity": 0.25, "layers": {"skip_last": 1}},
}


def _inputs(spec):
    yield spec.example_args, spec.example_kwargs
    if spec.make_inputs is not None:
        yield spec.make_inputs(3, 7)


def _eager_with_masks(model, program):
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for fqn in mask_specs(program):
            masked.get_parameter(fqn).mul_(program.constants[f"{fqn}_mask"])
    return masked


def _check(zoo, name, recipe):
    spec, program = zoo(name)
    result = sparsify(program, RECIPES[recipe])
    masked = result.program
    assert result.report.sparse_layers > 0
    for row in result.report.rows:
        if row.status == "sparse":
            assert row.achieved >= row.target - 1.0 / row.params, row
    eager = _eager_with_masks(spec.model, masked).eval()
    folded = FoldMasksPass()(masked).program
    VerifySparsityPass()(folded)
    with torch.no_grad():
        for args, kwargs in _inputs(spec):
            want = eager(*args, **kwargs)
            got = masked.module()(*args, **kwargs)
            assert_close_tree(got, want, rtol=RTOL, atol=ATOL)
            assert_close_tree(folded.module()(*args, **kwargs), got, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_reference_models(zoo, name, recipe):
    _check(zoo, name, recipe)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["2:4", "unstructured50"])
@pytest.mark.parametrize("name", [m for m in PRETRAINED_MODELS if m != "smollm2"])
def test_pretrained_models(zoo, name, recipe):
    _check(zoo, name, recipe)


@pytest.mark.slow
def test_smollm2_2of4(zoo):
    _check(zoo, "smollm2", "2:4")


def test_input_program_is_left_untouched(zoo):
    spec, program = zoo("mlp")
    before = {k: v.clone() for k, v in program.state_dict.items()}
    graph_before = str(program.graph)
    sparsify(program, RECIPES["2:4"], fold=True)
    assert str(program.graph) == graph_before
    assert all(torch.equal(program.state_dict[k], v) for k, v in before.items())
