"""Lowering to ONNX: parity with the program, dynamic axes, provenance, manifest facts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sparsecc.backends.base import Artifact, LowerOptions, Support, get_backend  # noqa: E402
from sparsecc.backends.onnx import OnnxBackend  # noqa: E402
from sparsecc.backends.onnx.checks import DENSE_REASON  # noqa: E402
from sparsecc.backends.onnx.export import dim_names  # noqa: E402
from sparsecc.core.ir import MaskSpec, SparsityPattern, set_node_info  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5  # fp32 across runtimes

SHAPES = {
    "mlp": [(4, 16), (1, 16), (7, 16)],
    "cnn": [(2, 3, 12, 12), (1, 3, 12, 12), (5, 3, 12, 12)],
    "attention": [(2, 5, 32), (3, 9, 32), (1, 1, 32), (4, 17, 32)],
}


def test_registered():
    backend = get_backend("onnx")
    assert isinstance(backend, OnnxBackend)
    assert backend.available()


@pytest.mark.parametrize("name", list(SHAPES))
def test_parity_with_program(cases, backend, name):
    case = cases[name]
    runner = backend.load(case.artifact, threads=1)
    reference = case.program.module()
    torch.manual_seed(3)
    for shape in SHAPES[name]:
        x = torch.randn(shape)
        with torch.no_grad():
            want = reference(x)
        (got,) = runner([x])
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name} {shape}: {m}")


def test_session_options(cases, backend):
    opts = backend.load(cases["mlp"].artifact, threads=2).session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_run_checks_inputs_then_runs(cases, backend):
    case = cases["mlp"]
    (got,) = backend.run(case.artifact, [case.example])
    torch.testing.assert_close(got, case.model(case.example).detach(), rtol=RTOL, atol=ATOL)


def test_dynamic_axes_are_named(cases):
    art = cases["attention"].artifact
    assert art.inputs[0].shape == ("batch", "seq", 32)
    assert art.outputs[0].shape == ("batch", "seq", 32)
    model = onnx.load(str(art.path()))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq", 32]
    assert sorted(art.meta["dynamic_axes"].values()) == ["batch", "seq"]
    assert cases["cnn"].artifact.inputs[0].shape == ("batch", 3, 12, 12)


def test_dim_names_override_and_default(cases):
    program = cases["attention"].program
    assert sorted(dim_names(program).values()) == ["batch", "seq"]
    named = dim_names(program, {"x": {0: "n", 1: "tokens"}})
    assert sorted(named.values()) == ["n", "tokens"]


def _onnx_weight(art: Artifact, fqn: str) -> tuple[dict, np.ndarray]:
    prov = art.meta["provenance"][fqn]
    model = onnx.load(str(art.path()))
    init = next(t for t in model.graph.initializer if t.name == prov["initializer"])
    return prov, onnx.numpy_helper.to_array(init)


def test_provenance_linear_on_3d_input_is_transposed_matmul(cases):
    case = cases["attention"]
    for fqn in ("q.weight", "v.weight", "o.weight", "ff1.weight", "ff2.weight"):
        prov, stored = _onnx_weight(case.artifact, fqn)
        assert prov["layout"] == "transposed [in, out]"
        assert prov["perm"] == [1, 0] and prov["onnx_reduction_axis"] == 0
        assert [c["op"] for c in prov["consumers"]] == ["MatMul"]
        assert prov["consumers"][0]["input"] == 1
        np.testing.assert_array_equal(stored, case.program.state_dict[fqn].detach().numpy().T)
    names = {case.artifact.meta["provenance"][f]["initializer"] for f in ("q.weight", "k.weight", "v.weight")}
    assert len(names) == 3  # three different initializers, not one matched thrice


def test_provenance_linear_on_2d_input_is_gemm_as_is(cases):
    case = cases["mlp"]
    prov, stored = _onnx_weight(case.artifact, "fc1.weight")
    assert prov["layout"] == "as is [out, in]" and prov["perm"] == [0, 1]
    assert prov["consumers"][0]["op"] == "Gemm" and prov["consumers"][0]["transB"] == 1
    np.testing.assert_array_equal(stored, case.program.state_dict["fc1.weight"].detach().numpy())


def test_provenance_conv_with_folded_batchnorm(cases):
    case = cases["cnn"]
    prov, stored = _onnx_weight(case.artifact, "c2.weight")
    assert prov["layout"] == "as is [out, in, kh, kw]"
    assert prov["values"].startswith("scaled per output channel")
    assert prov["consumers"][0]["op"] == "Conv"
    original = case.program.state_dict["c2.weight"].detach().numpy()
    np.testing.assert_array_equal(stored == 0, original == 0)  # same zeros, rescaled values
    assert case.artifact.meta["provenance"]["c3.weight"]["values"] == "identical"


def test_every_prunable_weight_has_provenance(cases):
    for case in cases.values():
        prov = case.artifact.meta["provenance"]
        missing = {k: v.get("reason") for k, v in prov.items() if v.get("initializer") is None}
        assert not missing, f"{case.name}: {missing}"
        assert all(v["storage"] == "dense" for v in prov.values())


def test_artifact_manifest_round_trip(cases, backend):
    case = cases["cnn"]
    d = json.loads(json.dumps(case.artifact.to_dict()))
    assert d["files"] == {"model": "model.onnx"} and d["sizes"]["model"] > 0
    assert d["meta"]["opset"] >= 18
    assert d["meta"]["cleanup"]["nodes_after"] <= d["meta"]["cleanup"]["nodes_before"]
    assert {"export", "cleanup", "provenance", "save"} <= set(d["meta"]["timings_s"])
    again = Artifact.from_dict(d, case.artifact.root)
    (got,) = backend.load(again)([case.example])
    torch.testing.assert_close(got, case.model(case.example).detach(), rtol=RTOL, atol=ATOL)


def test_graph_is_clean(cases):
    for case in cases.values():
        model = onnx.load(str(case.artifact.path()))
        ops = [n.op_type for n in model.graph.node]
        assert "Identity" not in ops and "Constant" not in ops, case.name
        produced = {o for n in model.graph.node for o in n.output}
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        assert produced <= used, f"{case.name}: dead outputs {produced - used}"
        onnx.checker.check_model(model, full_check=True)


def test_check_reports_dense_with_trt_eligibility(cases, backend):
    checks = {c.fqn: c for c in backend.check(cases["cnn"].program)}
    assert set(checks) == {"c1.weight", "c2.weight", "c3.weight", "fc.weight"}
    assert all(c.support is Support.DENSE and c.reason.startswith(DENSE_REASON) for c in checks.values())
    assert "TensorRT 2:4: eligible by shape (K=16" in checks["c2.weight"].reason
    assert "TensorRT 2:4: eligible by shape (K=32" in checks["fc.weight"].reason
    assert "TensorRT" not in checks["c1.weight"].reason  # dense: no N:M claim


def test_check_flags_nm_spec_with_bad_k(tools, backend):
    model = torch.nn.Sequential(torch.nn.Linear(6, 8)).eval()
    program = tools.capture(model, torch.randn(2, 6), None)
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and "weight" in n.name)
    set_node_info(node, spec=MaskSpec("0.weight", SparsityPattern.n_m(2, 4), 0.5))
    (check,) = backend.check(program)
    assert "TensorRT 2:4: not eligible by shape (K=6 not a multiple of 4)" in check.reason


def test_external_data_when_over_threshold(tmp_path, cases, backend):
    case = cases["mlp"]
    art = backend.lower(case.program, tmp_path, LowerOptions(extra={"external_data_threshold": 0}))
    assert art.files == {"model": "model.onnx", "weights": "model.onnx.data"}
    assert art.path("weights").stat().st_size > art.path("model").stat().st_size
    (got,) = backend.load(art)([case.example])
    torch.testing.assert_close(got, case.model(case.example).detach(), rtol=RTOL, atol=ATOL)
    checks = backend.verify_pattern(art, [MaskSpec("fc1.weight", SparsityPattern.n_m(2, 4), 0.5)])
    assert checks[0].ok
