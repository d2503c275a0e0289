"""torch-sparse backend: lowering, pattern re-check from the compressed weights, compile and bench."""

from __future__ import annotations

import json

import pytest
import torch

import sparsecc
from sparsecc.backends import InputMismatchError, LowerOptions, Support, get_backend
from sparsecc.backends.torch_sparse import KERNELS_FILE, load_sparse_program
from sparsecc.core.ir import MaskSpec, SparsityPattern
from sparsecc.testing import normalized_ops

RECIPE = {"pattern": "8x8", "sparsity": 0.9, "layers": {"min_params": 1}}


@pytest.fixture(scope="module")
def folded(zoo):
    spec, program = zoo("mlp")
    result = sparsecc.sparsify(program, RECIPE, fold=True)
    return spec, result.program, list(sparsecc.mask_specs(result.program).values())


def test_lower_fixed_kernels_writes_a_loadable_program(folded, tmp_path):
    spec, program, specs = folded
    backend = get_backend("torch-sparse")
    art = backend.lower(program, tmp_path, LowerOptions(extra={"kernel_fixed": "bsr8"}))
    assert set(art.files) == {"model", "kernels"}
    plan = json.loads((tmp_path / KERNELS_FILE).read_text())
    assert plan == art.meta["kernels"]
    sparse = [c for c in plan["layers"] if c["kernel"] != "dense"]
    assert sparse and all(c["kernel"] == "bsr" and c["block"] == 8 for c in sparse)
    loaded = load_sparse_program(art.path("model"))
    assert sum(op == "sparsecc.sparse_linear.default" for op in normalized_ops(loaded)) == len(sparse)
    runner = backend.load(art)
    (x,) = spec.example_args
    with torch.no_grad():
        want = program.module()(x)
    (got,) = runner([x])
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    with pytest.raises(InputMismatchError, match="expected 1 inputs"):
        runner([x, x])
    checks = {c.fqn: c for c in backend.check_artifact(program, art)}
    for c in plan["layers"]:
        assert checks[c["fqn"]].support == (Support.SPARSE if c["kernel"] != "dense" else Support.DENSE)


def test_verify_pattern_reads_the_compressed_weights(folded, tmp_path):
    _, program, specs = folded
    backend = get_backend("torch-sparse")
    art = backend.lower(program, tmp_path, LowerOptions(extra={"kernel_fixed": "bsr8"}))
    checks = backend.verify_pattern(art, specs)
    assert checks and all(c.ok for c in checks), [c.reason for c in checks if not c.ok]
    by_fqn = {c.fqn: c for c in checks}
    sparse = [c["fqn"] for c in art.meta["kernels"]["layers"] if c["kernel"] != "dense"]
    assert by_fqn[sparse[0]].layout == "BSR 8x8 [out, in]"
    # a stricter target than the weight holds must fail, naming the shortfall
    strict = MaskSpec(sparse[0], SparsityPattern.blocks(8, 8), 0.99)
    (bad,) = backend.verify_pattern(art, [strict])
    assert not bad.ok and "blocks are all zero, expected at least" in bad.reason
    (missing,) = backend.verify_pattern(art, [MaskSpec("nope.weight", SparsityPattern.unstructured(), 0.5)])
    assert not missing.ok and missing.reason == "weight not found in the saved program"


def test_check_before_lowering_says_which_layers_are_candidates(zoo):
    _, program = zoo("resnet")
    checks = {c.fqn: c for c in get_backend("torch-sparse").check(program)}
    assert checks["fc.weight"].support == Support.SPARSE
    assert checks["conv1.weight"].support == Support.DENSE
    assert checks["conv1.weight"].reason == "runs dense: convolution kernel is not 1x1"


def test_compile_and_bench_side_by_side_with_onnx_runtime(zoo, tmp_path):
    from sparsecc.benchmarking import bench, to_markdown, validate
    from sparsecc.flows.compile import compile

    spec, program = zoo("mlp")
    out = tmp_path / "bundle"
    result = compile(spec, RECIPE, out, targets=["torch-sparse", "onnx"], program=program)
    target = result.manifest["targets"]["torch-sparse"]
    assert target["parity"]["ok"] and target["pattern_verification"]["ok"]
    layers = target["artifact"]["meta"]["kernels"]["layers"]
    for c in layers:  # every choice carries its measurement and says why
        assert c["reason"] and c["threads"] == 1
        if c["kernel"] != "dense":
            assert c["gain"] >= 1.1 and "dense" in c["times_ms"]
    # the dense reference runs the same backend: nothing is sparse there, nothing is measured
    dense_layers = result.manifest["dense_reference"]["targets"]["torch-sparse"]["artifact"]["meta"]["kernels"]["layers"]
    assert all(c["kernel"] == "dense" and not c["times_ms"] for c in dense_layers)

    res = bench(out, backends=["torch-sparse"], threads=[1], runs=3, warmup=1, profile=False, isolate=False)
    validate(res.data)
    (run,) = res.data["bundles"][0]["runs"]
    assert run["status"] == "ok", run.get("error")
    assert set(run["variants"]) == {"sparse", "dense", "onnx-dense", "onnx-int8-dense"}
    ref = run["references"]["onnx-dense"]
    assert ref["ratio"] > 0 and len(run["variants"]["onnx-dense"]["samples_ms"]) == 3
    assert "against onnx-dense" in to_markdown(res)


class KeywordInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32, 16)

    def forward(self, input_ids, attention_mask):
        return self.fc(input_ids) * attention_mask


def test_runner_takes_keyword_inputs_flat(tmp_path):
    from sparsecc.flows.compile import compile

    x, mask = torch.randn(3, 32), torch.ones(3, 1)
    result = compile(KeywordInputs(), RECIPE, tmp_path / "b", example_kwargs={"input_ids": x, "attention_mask": mask},
                     targets=["torch-sparse"], dense_reference=False)
    target = result.manifest["targets"]["torch-sparse"]
    assert target["parity"]["ok"]
    runner = get_backend("torch-sparse").load(result.targets["torch-sparse"].artifact)
    (got,) = runner([x, mask])
    with torch.no_grad():
        want = result.program.module()(input_ids=x, attention_mask=mask)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
