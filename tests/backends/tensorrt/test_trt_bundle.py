"""`--target tensorrt-bundle`: a complete edge bundle, a build.sh that runs, and the device report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from sparsecc.backends.onnx.verify_nm import check_nm
from sparsecc.backends.tensorrt.golden_compare import FP16_RTOL
from sparsecc.backends.tensorrt.trtexec import FLAGS_BY_MAJOR

FILES = ("model.fp16.onnx", "build.sh", "compare.py", "golden.npz", "expected_sparse_layers.json", "versions.json")


def test_bundle_is_complete(resnet_bundle):
    folder = resnet_bundle / "tensorrt-bundle"
    for name in FILES:
        assert (folder / name).is_file(), name
    assert (folder / "golden" / "x.bin").stat().st_size == 2 * 3 * 32 * 32 * 4
    manifest = json.loads((resnet_bundle / "manifest.json").read_text())
    target = manifest["targets"]["tensorrt-bundle"]
    assert target["pattern_verification"]["ok"] and len(target["pattern_verification"]["layers"]) == 4
    assert target["parity"]["ok"] and target["parity"]["rtol"] == FP16_RTOL
    assert target["artifact"]["meta"]["expected_sparse_layers"] == [
        "layers.1.conv1", "layers.1.conv2", "layers.2.conv1", "layers.2.conv2"]
    versions = json.loads((folder / "versions.json").read_text())
    assert versions["profile"]["x"] == {"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [64, 3, 32, 32]}
    assert versions["tensorrt"]["supported_majors"] == [10, 11]


def test_fp16_onnx_passes_the_verifier_on_every_eligible_layer(resnet_bundle):
    folder = resnet_bundle / "tensorrt-bundle"
    model = onnx.load(str(folder / "model.fp16.onnx"))
    expected = json.loads((folder / "expected_sparse_layers.json").read_text())
    want = {e["onnx_node"] for e in expected["layers"] if e["onnx_2_4"]}
    layers = {e.node: e for e in check_nm(model)}
    assert want and all(layers[n].eligible for n in want)
    inits = {i.name: i for i in model.graph.initializer}
    assert all(inits[layers[n].initializer].data_type == onnx.TensorProto.FLOAT16 for n in want)


def test_build_sh_is_valid_bash_with_the_right_flags(resnet_bundle):
    script = resnet_bundle / "tensorrt-bundle" / "build.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    branch10 = text[text.index("    10)"):text.index("    11)")]
    branch11 = text[text.index("    11)"):text.index("  esac\n}")]
    for branch in (branch10, branch11):
        for flag in ("--sparsity=enable", "--sparsity=disable", "--profilingVerbosity=detailed",
                     "--timingCacheFile=timing.cache", "--exportLayerInfo=sparse.layers.json",
                     "--exportProfile=sparse.profile.json", "--exportTimes=sparse.times.json",
                     "--minShapes=$MIN_SHAPES", "--optShapes=$OPT_SHAPES", "--maxShapes=$MAX_SHAPES",
                     "--loadInputs=x:$HERE/golden/x.bin", "--exportOutput=sparse.outputs.json"):
            assert flag in branch, flag
    assert FLAGS_BY_MAJOR[10] == ("--fp16",) and branch10.count('"--fp16"') == 2
    for line in ('MIN_SHAPES="${MIN_SHAPES:-x:1x3x32x32}"', 'OPT_SHAPES="${OPT_SHAPES:-x:2x3x32x32}"',
                 'MAX_SHAPES="${MAX_SHAPES:-x:64x3x32x32}"'):
        assert line in text
    assert "--fp16" not in branch11 and "--stronglyTyped" not in branch11


FAKE_TRTEXEC = """#!/usr/bin/env bash
# Stands in for trtexec: prints the banner of TensorRT $FAKE_CODE, writes what the real one
# exports (copied from recorded fixtures), and the golden outputs as --exportOutput JSON.
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v${FAKE_CODE}] # trtexec $*"
[[ "$1" == --help ]] && exit 0
echo "$*" >> "$FAKE_ARGS"
for a in "$@"; do
  case "$a" in
    --saveEngine=*) prefix="${a#--saveEngine=}"; prefix="${prefix%.plan}"; echo plan > "${prefix}.plan" ;;
  esac
done
if [[ "$prefix" == sparse ]]; then cat "$FIXTURES/trt10_resnet_sparse.build.log"; fi
cp "$FIXTURES/trt10_resnet_sparse.layers.json" "${prefix}.layers.json"
cp "$FIXTURES/trt10_resnet_${prefix}.profile.json" "${prefix}.profile.json"
cp "$FIXTURES/trt10_resnet_${prefix}.times.json" "${prefix}.times.json"
"$PYTHON" -c 'import json, sys, numpy as np
g = np.load(sys.argv[1]); k = [f for f in g.files if f.startswith("output_")][0]
v = g[k].astype(np.float16).astype(np.float64)
json.dump([{"name": k.split("_", 2)[2], "dimensions": "x".join(map(str, v.shape)), "values": v.ravel().tolist()}],
          open(sys.argv[2], "w"))' "$GOLDEN" "${prefix}.outputs.json"
"""


@pytest.fixture
def device_run(resnet_bundle, fixtures, tmp_path):
    """Run build.sh with a stand-in trtexec, as a device would; returns (bundle copy, args log)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(resnet_bundle, bundle)
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC)
    fake.chmod(0o755)
    env = dict(os.environ, FAKE_CODE="100300", FAKE_ARGS=str(tmp_path / "args.txt"), FIXTURES=str(fixtures),
               PYTHON=sys.executable, GOLDEN=str(bundle / "tensorrt-bundle" / "golden.npz"))
    proc = subprocess.run(["bash", str(bundle / "tensorrt-bundle" / "build.sh"), "--trtexec", str(fake)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return bundle, (tmp_path / "args.txt").read_text(), proc.stdout


def test_build_sh_detects_the_version_and_runs_both_builds(device_run):
    bundle, args, stdout = device_run
    assert "building with TensorRT 10" in stdout
    sparse, dense = args.strip().splitlines()
    assert "--sparsity=enable" in sparse and "--fp16" in sparse and "--sparsity=disable" in dense
    assert "--minShapes=x:1x3x32x32 --optShapes=x:2x3x32x32 --maxShapes=x:64x3x32x32" in sparse
    assert "(Sparsity) TRT inference plan picked sparse implementation for layers: node_Conv_136" in stdout
    assert "sparse: linear: ok" in stdout and "dense: linear: ok" in stdout
    for name in ("sparse.plan", "dense.plan", "sparse.build.log", "sparse.layers.json", "dense.times.json"):
        assert (bundle / "tensorrt-bundle" / "build" / name).is_file(), name


def test_build_sh_refuses_an_unknown_version(resnet_bundle, tmp_path):
    fake = tmp_path / "trtexec"
    fake.write_text("#!/usr/bin/env bash\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v8601]'\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(resnet_bundle / "tensorrt-bundle" / "build.sh"), "--trtexec", str(fake),
                           "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert proc.returncode == 1 and "TensorRT 8 is not supported (10 or 11)" in proc.stderr


def test_compare_py_catches_a_wrong_output(resnet_bundle, tmp_path):
    folder = resnet_bundle / "tensorrt-bundle"
    golden = np.load(folder / "golden.npz")
    want = golden["output_0_linear"].astype(np.float64)
    bad = want + 0.2 * np.abs(want).max()
    out = tmp_path / "out.json"
    out.write_text(json.dumps([{"name": "linear", "dimensions": "x".join(map(str, want.shape)),
                                "values": bad.ravel().tolist()}]))
    proc = subprocess.run([sys.executable, str(folder / "compare.py"), str(folder / "golden.npz"), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "linear: MISMATCH" in proc.stdout


def test_bench_reads_the_device_build(device_run, tmp_path):
    from sparsecc.cli import main

    bundle, _, _ = device_run
    out = tmp_path / "trt.json"
    with pytest.raises(SystemExit) as e:
        main(["bench", str(bundle), "--backend", "tensorrt", "--out", str(out)])
    assert e.value.code in (0, None)
    result = json.loads(out.read_text())
    assert result["tensorrt"] == "10.3.0" and result["summary"]["sparse"] == 1
    rows = {r["layer"]: r for r in result["layers"]}
    assert rows["layers.2.conv1"]["status"] == "sparse"
    # the recorded profiles: 12 us dense, 9.5 us with the sparse kernel
    assert rows["layers.2.conv1"]["dense_ms"] == pytest.approx(0.012)
    assert rows["layers.2.conv1"]["sparse_ms"] == pytest.approx(0.012 * 0.99 * 0.8)
    assert rows["layers.1.conv1"]["reason"].startswith("TensorRT timed dense faster for this layer: C_in=16")
    lat = result["latency"]
    assert lat["speedup"]["ratio"] > 1.0 and lat["verdict"] == "faster"


def test_bench_without_a_device_build_says_what_to_do(resnet_bundle, tmp_path):
    from sparsecc.benchmarking.tensorrt_device import TensorRTBenchError, tensorrt_bench

    with pytest.raises(TensorRTBenchError, match="run build.sh on the device first"):
        tensorrt_bench(resnet_bundle)
    with pytest.raises(TensorRTBenchError, match="no TensorRT artifact"):
        tensorrt_bench(tmp_path)


def test_build_sh_on_tensorrt_11_with_another_opt_shape(resnet_bundle, fixtures, tmp_path):
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC)
    fake.chmod(0o755)
    folder = resnet_bundle / "tensorrt-bundle"
    env = dict(os.environ, FAKE_CODE="110400", FAKE_ARGS=str(tmp_path / "args.txt"), FIXTURES=str(fixtures),
               PYTHON=sys.executable, GOLDEN=str(folder / "golden.npz"), OPT_SHAPES="x:8x3x32x32")
    proc = subprocess.run(["bash", str(folder / "build.sh"), "--trtexec", str(fake), "--out", str(tmp_path / "b")],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "building with TensorRT 11" in proc.stdout
    sparse, dense = (tmp_path / "args.txt").read_text().strip().splitlines()
    assert "--fp16" not in sparse + dense
    assert "--optShapes=x:8x3x32x32" in sparse and "--shapes=x:2x3x32x32" in sparse


def test_lowering_without_example_inputs_says_what_is_missing(zoo, tmp_path):
    from sparsecc.backends import LoweringError, get_backend

    _, program = zoo("resnet")
    with pytest.raises(LoweringError, match=r"needs example inputs for its golden data"):
        get_backend("tensorrt-bundle").lower(program, tmp_path / "b")


def test_trtexec_times_drop_the_warm_up(tmp_path):
    from sparsecc.benchmarking.tensorrt_device import load_profile, load_times

    trace = [{"startComputeMs": t, "computeMs": c, "latencyMs": c + 0.1} for t, c in ((10.0, 9.0), (150.0, 8.0),
                                                                                      (210.0, 1.0), (220.0, 2.0))]
    (tmp_path / "t.json").write_text(json.dumps(trace))
    assert load_times(tmp_path / "t.json") == [1.0, 2.0]
    (tmp_path / "p.json").write_text('[\n  { "count" : 10 }\n, { "name" : "conv + relu", "timeMs" : 1.5, '
                                     '"averageMs" : 0.15, "percentage" : 100 }\n]\n')
    assert load_profile(tmp_path / "p.json") == {"conv + relu": 0.15}
