"""`sparsecc verify`: an untouched bundle verifies; one weight changed in any artifact so that a 2:4
group breaks is found and named (layer and group); bench and eval refuse a changed bundle."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sparsecc.bundle.hashes import BundleChangedError
from sparsecc.flows.compile import compile
from sparsecc.flows.verify_bundle import BundleVerificationError, require_verified, verify_bundle

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "2of4.yaml"
TARGETS = ["onnx", "executorch", "torch-sparse"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tests.conftest import captured_zoo_model

    spec, program = captured_zoo_model("mlp")
    out = tmp_path_factory.mktemp("verify") / "mlp"
    compile(spec, RECIPE, out, targets=TARGETS, program=program, dense_reference=False)
    return out


def _copy(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _break_onnx_group(b: Path) -> str:
    import onnx
    from onnx import numpy_helper

    path = b / "onnx" / "model.onnx"
    model = onnx.load(str(path))
    prov = json.loads((b / "manifest.json").read_text())["targets"]["onnx"]["artifact"]["meta"]["provenance"]
    fqn, name = next((f, p["initializer"]) for f, p in prov.items() if p.get("initializer"))
    init = next(i for i in model.graph.initializer if i.name == name)
    a = numpy_helper.to_array(init).copy()
    a[tuple(np.argwhere(a == 0)[0])] = 1.0  # a third nonzero in one group of 4
    init.CopyFrom(numpy_helper.from_array(a, name))
    onnx.save(model, str(path))
    return fqn


def _break_pte_group(b: Path) -> str:
    from sparsecc.backends.executorch.pte import PteReader

    m = json.loads((b / "manifest.json").read_text())
    fqn = m["masks"][0]["fqn"]
    entry = m["targets"]["executorch"]["artifact"]["meta"]["weights"][fqn]
    path = b / "executorch" / "model.pte"
    data = bytearray(path.read_bytes())
    tensor, _key = PteReader(bytes(data)).xnnpack_tensor(int(entry["delegate"]), int(entry["value"]))
    values = tensor.contiguous().numpy()
    start = data.find(values.tobytes())  # the weight's bytes inside the file
    assert start > 0 and values.dtype == np.float32
    i = int(np.flatnonzero(values.reshape(-1) == 0)[0])
    data[start + 4 * i:start + 4 * i + 4] = np.float32(1.0).tobytes()
    path.write_bytes(bytes(data))
    return fqn


def _break_torch_sparse_group(b: Path) -> str:
    """Break group 0 of the first layer in whichever form the kernel choice (a timing) stored it."""
    from sparsecc.backends.torch_sparse import load_sparse_program
    from sparsecc.backends.torch_sparse.rewrite_sparse_kernels import compressed_targets
    from sparsecc.core.program import save_program, state_tensor

    path = b / "torch-sparse" / "program.pt2"
    program = load_sparse_program(path)
    m = json.loads((b / "manifest.json").read_text())
    fqn = m["masks"][0]["fqn"]
    choice = next(c for c in m["targets"]["torch-sparse"]["artifact"]["meta"]["kernels"]["layers"] if c["fqn"] == fqn)
    if choice["kernel"] == "dense":  # a plain parameter: a third nonzero in row 0's first group
        flat = state_tensor(program, fqn).data.view(-1)
        flat[int((flat == 0).nonzero()[0])] = 1.0
    elif choice["block"] > 1:  # BSR blocks hold the zeros: the first is in row 0, group 0
        values = state_tensor(program, compressed_targets(fqn)[2]).data.view(-1)
        values[int((values == 0).nonzero()[0])] = 1.0
    else:  # CSR holds nonzeros only: move row 0's third one into columns 0-2
        col = state_tensor(program, compressed_targets(fqn)[1]).data
        assert col.dtype in (torch.int32, torch.int64) and int(col[3]) > 2
        col[:3] = torch.arange(3, dtype=col.dtype)
    save_program(program, path)
    return fqn


def test_untouched_bundle_verifies(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    report = require_verified(verify_bundle(bundle))
    assert report.hashes.checked == len(m["files"]) > 0 and not report.skipped
    for target in TARGETS:
        assert [c["ok"] for c in report.patterns[target]] == [True] * len(m["masks"])
        labels = [c["inputs"] for c in report.parity[target]]
        assert labels[0] == "example" and any(lab.startswith("largest") for lab in labels)


@pytest.mark.parametrize("target, tamper", [("onnx", _break_onnx_group), ("executorch", _break_pte_group),
                                            ("torch-sparse", _break_torch_sparse_group)])
def test_a_broken_group_is_named_by_layer_and_group(bundle, tmp_path, target, tamper):
    b = _copy(bundle, tmp_path)
    fqn = tamper(b)
    report = verify_bundle(b)
    assert not report.ok
    pattern = [p for p in report.problems if p.check == "pattern"]
    assert [p.target for p in pattern] == [target] and fqn in pattern[0].where
    assert "group 0" in pattern[0].detail and "2:4" in pattern[0].detail
    assert {p.target for p in report.problems if p.check == "parity"} == {target}
    changed = {"onnx": "onnx/model.onnx", "executorch": "executorch/model.pte", "torch-sparse": "torch-sparse/program.pt2"}
    assert [p.where for p in report.problems if p.check == "hash"] == [changed[target]]
    with pytest.raises(BundleVerificationError, match=fqn.replace(".", r"\.")) as e:
        require_verified(report)
    assert e.value.exit_code == 4


def test_cli_verify_exits_4_naming_the_layer(bundle, tmp_path):
    from sparsecc.cli import app

    b = _copy(bundle, tmp_path)
    fqn = _break_onnx_group(b)
    result = CliRunner().invoke(app, ["verify", str(b), "-t", "onnx"])
    assert result.exit_code == 4, result.output
    assert fqn in result.output and "group 0" in result.output
    ok = CliRunner().invoke(app, ["verify", str(bundle), "-t", "onnx", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout[ok.stdout.index("{"):])["result"]["ok"] is True


def test_bench_and_eval_refuse_a_changed_bundle(bundle, tmp_path):
    from sparsecc.benchmarking.api import bench
    from sparsecc.quality.evaluate import evaluate_bundle

    b = _copy(bundle, tmp_path)
    (b / "onnx" / "model.onnx").write_bytes((b / "onnx" / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleChangedError, match="onnx/model.onnx"):
        bench(b, backends=["onnx"], runs=1, warmup=0, profile=False, isolate=False)
    with pytest.raises(BundleChangedError, match="onnx/model.onnx"):
        evaluate_bundle(b, "perplexity")


def test_a_case_passed_against_float64_is_verified_at_the_bound_it_passed(tmp_path, monkeypatch):
    """With a fixed bound below fp32 rounding every case goes to the float64 referee; compile records the bound
    each passed at, and `sparsecc verify` checks the stored outputs with it (and fails without it)."""
    import sparsecc.flows.compile as compile_flow
    import sparsecc.verify.float64_referee as float64_referee
    import sparsecc.backends.onnx.backend as onnx_backend
    from tests.conftest import captured_zoo_model

    for module in (compile_flow, onnx_backend):
        monkeypatch.setattr(module, "PARITY_RTOL", 1e-12)
        monkeypatch.setattr(module, "PARITY_ATOL", 0.0)
    # the rule itself is tested in tests/verify; here: the plumbing, whatever this CPU's rounding
    monkeypatch.setattr(float64_referee, "REFEREE_FACTOR", 1e6)
    spec, program = captured_zoo_model("mlp")
    b = tmp_path / "b"
    compile(spec, RECIPE, b, targets=["onnx"], program=program, dense_reference=False)
    m = json.loads((b / "manifest.json").read_text())
    refereed = [c for c in m["targets"]["onnx"]["parity"]["cases"] if "float64" in c]
    assert refereed and all(c["ok"] and c["rtol"] > 1e-12 for c in refereed)
    require_verified(verify_bundle(b, targets=["onnx"]))
    for c in m["targets"]["onnx"]["parity"]["cases"]:
        c.pop("rtol", None)
    (b / "manifest.json").write_text(json.dumps(m))
    report = verify_bundle(b, targets=["onnx"])
    assert {p.check for p in report.problems} == {"parity"}
