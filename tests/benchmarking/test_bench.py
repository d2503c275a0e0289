"""`sparsecc bench` / `sparsecc.bench`: a small bundle benchmarked end to end, and the pieces.

No timing assertions: the machine is shared and times are noisy. The tests
check structure (schema, layer mapping, reports) and the statistics' logic.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sparsecc.benchmarking import BenchResult, SchemaError, bench, bootstrap_ratio, build_inputs, validate, verdict
from sparsecc.bundle.reader import Bundle
from sparsecc.errors import BenchError
from sparsecc.benchmarking.inputs import resolve_dims
from sparsecc.benchmarking.onnx_layers import strip_profile_name
from sparsecc.benchmarking.profile_ort import parse_trace
from sparsecc.benchmarking.stats import FASTER, NO_CHANGE, SLOWER


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, request):
    from sparsecc.flows.compile import compile

    conftest_zoo = request.getfixturevalue("zoo")
    spec, program = conftest_zoo("mlp")
    out = tmp_path_factory.mktemp("bench") / "mlp"
    compile(spec, {"pattern": "unstructured", "sparsity": 0.5}, out, targets=["onnx"], program=program,
            dense_reference=True)
    return out


@pytest.fixture(scope="module")
def result(bundle):
    # in-process keeps the test fast; the CLI test below covers the subprocess path
    return bench(bundle, backends=["onnx"], threads=[1], warmup=2, runs=8, profile_runs=4, isolate=False)


def test_result_matches_schema_and_survives_json(result, tmp_path):
    result.validate()
    path = result.save(tmp_path / "run.json")
    again = BenchResult.load(path)
    assert again.data["schema"] == "sparsecc-bench/1"
    (b, run), = again.runs()
    assert run["status"] == "ok", run.get("error")
    # the dense int8 model a CPU user tries first is timed beside fp32 dense, and the sparse model's int8 copy too
    assert set(run["variants"]) == {"sparse", "dense", "onnx-int8-dense", "onnx-int8-sparse"}
    assert set(run["references"]) == {"onnx-int8-dense"}
    assert run["references"]["onnx-int8-dense"]["label"] in (FASTER, SLOWER, NO_CHANGE)
    both = run["int8_both"]
    assert both["label"] in (FASTER, SLOWER, NO_CHANGE) and both["ci95"][0] <= both["ratio"] <= both["ci95"][1]
    assert both["definition"].startswith("onnx-int8-dense p50 / onnx-int8-sparse p50")
    for v in run["variants"].values():
        assert v["latency_ms"]["n"] == 8 and len(v["samples_ms"]) == 8
        assert v["bytes"] > 0 and v["zstd_bytes"] > 0
    assert run["comparison"]["label"] in (FASTER, SLOWER, NO_CHANGE)
    assert again.data["machine"]["load_avg"] is not None


def test_per_layer_mapping_covers_the_sparse_layers(result, bundle):
    (_, run), = result.runs()
    expected = [lay["layer"] for lay in Bundle(bundle).sparse_layers]
    assert expected
    prof = run["profile"]
    assert prof["available"] and prof["missing"] == []
    assert [lay["layer"] for lay in prof["layers"]] == expected
    for lay in prof["layers"]:
        assert lay["sparse_ms"] is not None and lay["dense_ms"] is not None and lay["nodes"]["sparse"]
        # ONNX Runtime CPU runs these zeros densely: the verdict must not claim a gain
        assert lay["verdict"] == "no gain: runs dense kernels on this backend"
    assert set(prof["coverage"]) == {"sparse", "dense"}


def test_markdown_and_html_are_produced(result):
    md = result.markdown()
    assert "| backend | threads |" in md and "dense→sparse speed" in md and "Per layer: onnx" in md
    page = result.html()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") >= 2
    assert "<script" not in page  # self-contained, static


def test_schema_rejects_a_broken_result(result):
    data = json.loads(result.to_json())
    data["bundles"][0]["runs"][0]["comparison"]["label"] = "speedup"
    with pytest.raises(SchemaError, match=r"comparison\.label"):
        validate(data)
    del data["machine"]
    with pytest.raises(SchemaError, match="machine"):
        validate(data)


def test_ci_containing_one_is_no_measurable_change():
    # the same latencies in another order: equal medians, so the interval must straddle 1
    same = np.random.default_rng(1).normal(10, 1, 200)
    b = bootstrap_ratio(same[::-1], same, seed=0)
    assert b["ratio"] == pytest.approx(1.0) and b["ci95"][0] <= 1 <= b["ci95"][1]
    assert verdict(b["ci95"]) == NO_CHANGE
    assert verdict([0.97, 1.4]) == NO_CHANGE  # a point estimate above 1 is not enough
    assert verdict([1.02, 1.4]) == FASTER
    assert verdict([0.5, 0.9]) == SLOWER


def test_bootstrap_is_seeded_and_sees_a_clear_difference():
    dense, sparse = [2.0 + 0.01 * (i % 5) for i in range(50)], [1.0 + 0.01 * (i % 7) for i in range(50)]
    a, b = bootstrap_ratio(dense, sparse, seed=3), bootstrap_ratio(dense, sparse, seed=3)
    assert a == b and verdict(a["ci95"]) == FASTER and a["ratio"] == pytest.approx(2.0, rel=0.05)


def test_inputs_respect_the_dims(bundle):
    b = Bundle(bundle)
    arrays, dims = build_inputs(b.path, b.inputs, b.dynamic_dims, batch=3)
    assert dims["batch"] == 3
    for spec, a in zip(b.inputs, arrays):
        assert a.dtype == np.dtype(spec["dtype"])
        assert a.shape == tuple(dims[d] if isinstance(d, str) else d for d in spec["shape"])
    lo, hi = b.dynamic_dims["batch"]
    with pytest.raises(BenchError, match=r"--batch .* outside .*'batch'"):
        build_inputs(b.path, b.inputs, b.dynamic_dims, batch=hi + 1)
    with pytest.raises(BenchError, match="no dynamic dim besides batch"):
        build_inputs(b.path, b.inputs, b.dynamic_dims, seq=8)


def test_ids_and_masks_for_token_inputs():
    inputs = [{"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64"},
              {"name": "attention_mask", "shape": ["batch", "seq"], "dtype": "int64"}]
    dims = resolve_dims(inputs, {"batch": (1, 8), "seq": (2, 128)}, batch=2, seq=16)
    assert dims == {"batch": 2, "seq": 16}
    with pytest.raises(BenchError, match=r"--seq 1 is outside"):
        resolve_dims(inputs, {"batch": (1, 8), "seq": (2, 128)}, batch=2, seq=1)


def test_profile_names_and_trace_grouping():
    assert strip_profile_name("relu_1_nchwc_kernel_time") == "relu_1"
    assert strip_profile_name("node_linear_kernel_time") == "node_linear"
    assert strip_profile_name("fused node_linear_1_kernel_time") == "node_linear_1"
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 40},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              {"cat": "Node", "name": "a_kernel_time", "ts": 210, "dur": 30},
              {"cat": "Node", "name": "b_kernel_time", "ts": 250, "dur": 20}]
    e2e, per_run = parse_trace(events, skip=1)
    assert e2e == [100.0] and per_run == [{"a_kernel_time": 30.0, "b_kernel_time": 20.0}]


def test_missing_bundle_and_backend_name_the_cause(tmp_path, bundle):
    with pytest.raises(BenchError, match="manifest.json does not exist"):
        bench(tmp_path)
    with pytest.raises(BenchError, match="unknown backend 'tflite'"):
        bench(bundle, backends=["tflite"])
    with pytest.raises(BenchError, match="outside the bundle's range"):  # before any process starts
        bench(bundle, batch=10_000)


def test_cli_bench_and_report(bundle, tmp_path):
    run, page, md = tmp_path / "run.json", tmp_path / "r.html", tmp_path / "r.md"
    cmd = [sys.executable, "-m", "sparsecc", "bench", str(bundle), "--backend", "onnx", "--threads", "1",
           "--warmup", "1", "--runs", "5", "--profile-runs", "3", "--out", str(run), "--html", str(page), "--md", str(md)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "## sparsecc bench" in res.stdout and md.read_text() and page.read_text().startswith("<!doctype html>")
    assert "against onnx-int8-dense" in res.stdout and "against the best dense: " in res.stdout
    assert "both in int8 (ONNX Runtime quantize_dynamic): sparse is" in res.stdout or \
        "both in int8 (ONNX Runtime quantize_dynamic): no speed-up" in res.stdout
    BenchResult.load(run)
    res = subprocess.run([sys.executable, "-m", "sparsecc", "report", str(run), str(run)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "comparison" in res.stdout and res.stdout.count("| onnx |") == 2


def test_importing_the_benchmarking_package_does_not_import_torch():
    code = "import sys, sparsecc, sparsecc.benchmarking.backend_run; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False", res.stderr


def test_executorch_runs_in_its_own_process_with_an_operator_profile(zoo, tmp_path):
    pytest.importorskip("executorch")
    from sparsecc.flows.compile import compile

    spec, program = zoo("mlp")
    out = tmp_path / "mlp-et"
    compile(spec, {"pattern": "unstructured", "sparsity": 0.5}, out, targets=["executorch"], program=program,
            dense_reference=True)
    res = bench(out, backends=["executorch"], threads=[1], warmup=1, runs=4, profile_runs=3)
    res.validate()
    (_, run), = res.runs()
    assert run["status"] == "ok", run.get("error")
    assert run["comparison"]["label"] in (FASTER, SLOWER, NO_CHANGE)
    prof = run["profile"]
    # XNNPACK operators carry no layer names: the profile must say so rather than guess
    assert prof["operators"] and prof["layers"] == [] and not prof["layer_mapping"]
    assert sorted(prof["missing"]) == sorted(lay["layer"] for lay in Bundle(out).sparse_layers)
    assert "Per operator: executorch" in res.markdown()


def test_the_int8_copy_keeps_the_dense_outputs_within_int8_error(bundle):
    """ONNX Runtime's quantize_dynamic of the dense build: int8 MatMuls, outputs close to fp32."""
    import onnx
    import onnxruntime as ort

    from sparsecc.benchmarking.int8_reference import INT8_DENSE, int8_dense_copy, int8_dense_variant

    b = Bundle(bundle)
    v = int8_dense_variant(b, int8_dense_copy(b))
    assert v.name == INT8_DENSE and v.path.is_file()
    ops = {n.op_type for n in onnx.load(str(v.path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}, ops
    dense = b.variant("onnx", "dense").path
    x = {i.name: np.random.default_rng(0).standard_normal([2 if isinstance(d, str) else d for d in i.shape]
                                                          ).astype(np.float32)
         for i in ort.InferenceSession(str(dense)).get_inputs()}
    want = ort.InferenceSession(str(dense)).run(None, x)[0]
    got = ort.InferenceSession(str(v.path)).run(None, x)[0]
    pruned = ort.InferenceSession(str(b.variant("onnx", "sparse").path)).run(None, x)[0]

    def rel(y):
        return np.linalg.norm(y - want) / np.linalg.norm(want)

    # int8 costs this random MLP far less than pruning half its weights does
    assert 0 < rel(got) < rel(pruned) / 2, (rel(got), rel(pruned))


def test_an_onnx_custom_ops_bundle_gets_the_int8_dense_reference(bundle):
    """A bundle built only for onnx-custom-ops is timed against ONNX Runtime int8 dense too: its dense build is
    the same fp32 graph. The sparse build is not quantized again (its layers may be sparsecc's ops)."""
    from sparsecc.benchmarking.int8_reference import int8_dense_copy, int8_sparse_copy

    real = Bundle(bundle)

    class OnlyCustomOps:  # the same builds, filed under the other ONNX target
        def variant(self, backend, which):
            return real.variant("onnx", which) if backend == "onnx-custom-ops" else None

    path = int8_dense_copy(OnlyCustomOps())
    assert path is not None and path.is_file()
    assert int8_sparse_copy(OnlyCustomOps()) is None


def test_int8_both_verdict():
    from sparsecc.cli.bench import int8_both_verdict

    runs = [({}, {"status": "ok", "backend": "onnx", "int8_both": {"ratio": 1.3, "label": FASTER}}),
            ({}, {"status": "ok", "backend": "torch"})]
    assert int8_both_verdict(runs) == "both in int8 (ONNX Runtime quantize_dynamic): sparse is 1.30x faster than dense on onnx"
    assert int8_both_verdict(runs[1:]) == ""


def test_best_dense_verdict_names_the_fastest_dense_model():
    from sparsecc.cli.bench import best_dense_verdict

    def cmp(ratio, label):
        return {"ratio": ratio, "label": label}

    runs = [({}, {"status": "ok", "backend": "onnx", "comparison": cmp(1.8, FASTER),
                  "references": {"onnx-int8-dense": cmp(0.7, SLOWER)}})]
    assert best_dense_verdict(runs) == ("against the best dense: sparse is 1.43x slower than the best dense model "
                                        "on onnx (best dense: onnx-int8-dense)")
    runs[0][1]["references"]["onnx-int8-dense"] = cmp(2.5, FASTER)
    assert "sparse is 1.80x faster than the best dense model on onnx (best dense: onnx)" in best_dense_verdict(runs)
    assert best_dense_verdict([({}, {"status": "ok", "backend": "onnx", "comparison": cmp(1.1, NO_CHANGE)})]) == ""
