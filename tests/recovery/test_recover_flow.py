"""The recipe's recovery: section, run by flows.recover and by compile, on every small zoo model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sparsecc.errors import UsageError
from sparsecc.flows.recover import recover, training_batches
from sparsecc.flows.sparsify import sparsify
from sparsecc.models import get_model, list_models
from sparsecc.plan.recipe import load_recipe
from sparsecc.recovery import RecoveryOptions, masks_of
from sparsecc.recovery.base import assert_zeros_kept

from ..conftest import captured_zoo_model
from ._models import mlp_batches, mlp_program

SMALL = list_models(pretrained=False)
TWO_STAGES = [{"method": "reconstruct", "samples": 4, "batch_size": 2},
              {"method": "distill", "steps": 2, "samples": 4, "batch_size": 2, "lr": 1e-4}]
BLOCK_STAGE = {"method": "block-tune", "steps": 2, "samples": 4, "batch_size": 2, "lr": 1e-4}


def test_the_section_parses_in_order_with_defaults_and_round_trips():
    rec = load_recipe({"pattern": "2:4", "recovery": TWO_STAGES})
    assert [o.method for o in rec.recovery] == ["reconstruct", "distill"]
    assert rec.recovery[1].steps == 2 and rec.recovery[0].steps == 200 and rec.recovery[0].data == "calibration"
    assert load_recipe(rec.to_dict()).recovery == rec.recovery
    assert load_recipe({"pattern": "2:4", "recovery": "distill"}).recovery[0].method == "distill"


@pytest.mark.parametrize("section, key, why", [
    ({"method": "finetune"}, "recovery.method", "is not a recovery method"),
    ({"steps": 3}, "recovery.method", "is required"),
    ({"method": "distill", "lr": "fast"}, "recovery.lr", "must be a positive number"),
    ({"method": "distill", "stepz": 3}, "recovery.stepz", "is not a known key"),
    ({"method": "distill", "teacher": "other.pt2"}, "recovery.teacher", "is not a known teacher"),
    ([{"method": "reconstruct"}, {"method": "distill", "loss": "l2"}], r"recovery\[1\].loss", "must be one of"),
    ([], "recovery", "empty list"),
])
def test_a_bad_section_fails_naming_the_key(section, key, why):
    with pytest.raises(UsageError, match=rf"recipe key '{key}'.*{why}"):
        load_recipe({"pattern": "2:4", "recovery": section})


@pytest.mark.parametrize("name", SMALL)
def test_three_stage_recovery_on_every_small_zoo_model(name):
    spec, dense = captured_zoo_model(name)
    sparse = sparsify(dense, {"pattern": "unstructured", "sparsity": 0.5}, fold=True).program
    stages = load_recipe({"pattern": "2:4", "recovery": [TWO_STAGES[0], BLOCK_STAGE, TWO_STAGES[1]]}).recovery
    run = recover(sparse, dense, stages, spec=spec)
    assert [r["method"] for r in run.records] == ["reconstruct", "block-tune", "distill"]
    for r in run.records:
        assert r["data"] in ("calibration", "synthetic")
        assert math.isfinite(r["loss_before"]) and math.isfinite(r["loss_after"]) and r["tokens"] > 0
    assert run.records[2]["steps"] == 2 and run.records[1]["blocks"] >= 1
    assert run.records[0]["loss_after"] <= run.records[0]["loss_before"] * (1 + 1e-6)
    assert_zeros_kept(run.program, masks_of(sparse))


def test_compile_runs_the_section_records_it_and_lowers_to_every_backend(tmp_path):
    from sparsecc.flows.compile import compile

    spec, dense = captured_zoo_model("mlp")
    recipe = {"pattern": "2:4", "recovery": TWO_STAGES}
    result = compile(spec, recipe, tmp_path / "b", targets=("onnx", "executorch"), program=dense,
                     dense_reference=False)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    records = manifest["recovery"]
    assert [r["method"] for r in records] == ["reconstruct", "distill"]
    assert {"steps", "data", "loss_before", "loss_after", "seconds", "tokens", "options"} <= set(records[0])
    for target in ("onnx", "executorch"):
        assert manifest["targets"][target]["parity"]["ok"]
        assert manifest["targets"][target]["pattern_verification"]["ok"]
    assert "recovery" in load_recipe(str(tmp_path / "b" / "recipe.yaml")).to_dict()
    assert_zeros_kept(result.program, masks_of(result.program))


def test_recovery_without_data_or_model_is_a_usage_error():
    spec, dense = captured_zoo_model("mlp")
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    with pytest.raises(UsageError, match="training data"):
        recover(sparse, dense, load_recipe({"pattern": "2:4", "recovery": "distill"}).recovery)


def test_int8_weights_are_back_on_their_grid_after_training(tmp_path):
    from sparsecc.core.program import state_tensor
    from sparsecc.flows.compile import compile
    from sparsecc.passes.quantize_weights import int8_grid, quant_info

    spec, dense = captured_zoo_model("mlp")
    stage = {"method": "distill", "steps": 3, "samples": 8, "batch_size": 4, "lr": 1e-2}
    result = compile(spec, {"pattern": "2:4", "quantize": "int8", "recovery": [stage]}, tmp_path / "b",
                     targets=("onnx",), program=dense, dense_reference=False)
    quantized = [f for f in result.program.state_dict if quant_info(result.program, f) is not None]
    assert quantized
    for fqn in quantized:
        q, scale = int8_grid(result.program, fqn)
        w = state_tensor(result.program, fqn)
        axis = quant_info(result.program, fqn)["axis"]
        shape = [1] * w.dim()
        shape[axis] = -1
        assert torch.equal(q.float() * scale.reshape(shape), w), fqn  # int8 values, not trained floats
    assert_zeros_kept(result.program, masks_of(result.program))
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"]["onnx"]["parity"]["ok"]


def test_more_calibration_than_the_split_holds_is_an_error_not_noise():
    """A language model asked for more calibration windows than the calibration half has gets a UsageError
    naming the model and the counts; it used to train on random tokens, labelled 'synthetic', instead."""
    spec = get_model("minilm")
    too_many = RecoveryOptions("distill", data="calibration", samples=800000, batch_size=8)
    with pytest.raises(UsageError, match=r"recovery data 'calibration' for minilm: asked for 100000 batches of 8"):
        training_batches(spec, too_many)
    batches, label = training_batches(spec, RecoveryOptions("distill", data="calibration", samples=16,
                                                            batch_size=8))
    assert label == "calibration" and len(batches) == 2


def test_a_checkpoint_folder_refuses_a_run_from_another_program(tmp_path):
    """Resuming a stage from another starting program (another model, another one-shot result) would load
    weights that are not its own: the folder remembers the program it started from and says so."""
    batches = mlp_batches(2)
    stage = [RecoveryOptions("reconstruct", checkpoint_dir=str(tmp_path))]
    first = sparsify(mlp_program(seed=0), {"pattern": "2:4"}, fold=True).program
    recover(first, mlp_program(seed=0), stage, batches=batches)
    again = recover(first, mlp_program(seed=0), stage, batches=batches)  # the same start: resumes
    assert again.records[0]["loss_after"] < again.records[0]["loss_before"]
    other = sparsify(mlp_program(seed=1), {"pattern": "2:4"}, fold=True).program
    with pytest.raises(UsageError, match=r"checkpoint folder .*0-reconstruct holds a run that started from another "
                                         r"program"):
        recover(other, mlp_program(seed=1), stage, batches=batches)


def test_a_misspelt_option_fails_before_any_stage_runs_naming_stage_key_and_match(tmp_path):
    """An ``options:`` key no method reads used to be ignored silently (``lr_shedule: cosine`` trained at a
    constant rate); now the flow refuses it before the first stage, and compile before the pruning."""
    from sparsecc.flows.compile import compile

    stages = load_recipe({"pattern": "2:4", "recovery": [
        {"method": "reconstruct", "samples": 4, "batch_size": 2},
        {"method": "distill", "steps": 2, "options": {"lr_shedule": "cosine"}}]}).recovery
    said: list[str] = []
    sparse = sparsify(mlp_program(), {"pattern": "2:4"}, fold=True).program
    with pytest.raises(UsageError, match=r"recovery\[1\] \(distill\): option 'lr_shedule' is not read by distill "
                                         r"\(did you mean 'lr_schedule'\?\); distill reads: .*warmup"):
        recover(sparse, mlp_program(), stages, batches=mlp_batches(2), progress=said.append)
    assert said == []  # the reconstruct stage before it did not run
    spec, dense = captured_zoo_model("mlp")
    recipe = {"pattern": "2:4", "recovery": [{"method": "block-tune", "options": {"undo": 1, "cg_iters": 5}}]}
    with pytest.raises(UsageError, match=r"recovery\[0\] \(block-tune\): option 'cg_iters' is not read by "
                                         r"block-tune; block-tune reads: loss_batches, mask_padding, measure_batches"):
        compile(spec, recipe, tmp_path / "b", targets=("onnx",), program=dense, dense_reference=False,
                progress=said.append)
    assert said == [] and not (tmp_path / "b").exists()


@pytest.mark.parametrize("method, options, message", [
    ("distill", {"lr_schedule": "cosin"}, r"lr_schedule must be constant or cosine, got 'cosin'"),
    ("distill", {"warmup": 40}, r"warmup must lie in \[0, steps=10\), got 40"),
    ("distill", {"grad_clip": "large"}, r"option 'grad_clip' must be a number, got 'large'"),
    ("block-tune", {"normalize": "tokens"}, r"normalize must be token or total, got 'tokens'"),
    ("block-tune", {"measure_batches": 2.5}, r"option 'measure_batches' must be an integer, got 2.5"),
    ("reconstruct", {"ridge_to": "one_shot"}, r"ridge_to must be one-shot or zero, got 'one_shot'"),
    ("learned-mask", {"tau": [1.0, -1.0]}, r"option 'tau' must be a positive number or \[start, end\]"),
    ("sr-ste", {"schedule": "cubik"}, r"option 'schedule' must be one of constant, linear, cubic"),
])
def test_a_wrong_option_value_fails_before_any_stage_runs(method, options, message):
    """Values were checked only when their stage ran: a typo in the last stage of a long recipe (``cosin``)
    surfaced after an hour of the stages before it. Each method's settings parser now runs first."""
    stages = load_recipe({"pattern": "2:4", "recovery": [
        {"method": "reconstruct", "samples": 4, "batch_size": 2},
        {"method": method, "steps": 10, "options": options}]}).recovery
    said: list[str] = []
    sparse = sparsify(mlp_program(), {"pattern": "2:4"}, fold=True).program
    with pytest.raises(UsageError, match=rf"^recovery\[1\] \({method}\): {message}"):
        recover(sparse, mlp_program(), stages, batches=mlp_batches(2), progress=said.append)
    assert said == []
    fine = load_recipe({"pattern": "2:4", "recovery": [{"method": method, "steps": 10, "options": {
        "lr_schedule": "cosine", "warmup": 2, "grad_clip": "1e-1"} if method == "distill" else {}}]}).recovery
    from sparsecc.flows.recover import check_stages

    check_stages(fine)  # the right values (and a number YAML left as a string) pass


def test_every_shipped_recipe_names_only_options_its_methods_read():
    from sparsecc.flows.recover import check_stages
    from sparsecc.recipes import builtin_recipe, builtin_recipes

    with_recovery = 0
    for name in builtin_recipes():
        stages = load_recipe(str(builtin_recipe(name))).recovery
        check_stages(stages)
        with_recovery += bool(stages)
    assert with_recovery >= 4
