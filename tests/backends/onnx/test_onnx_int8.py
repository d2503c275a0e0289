"""ONNX export of int8 weights: QDQ initializers, patterns verified through DequantizeLinear, ORT parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import sparsecc  # noqa: E402
from sparsecc.backends.base import LowerOptions  # noqa: E402
from sparsecc.backends.onnx import OnnxBackend  # noqa: E402
from sparsecc.core.program import state_tensor  # noqa: E402
from sparsecc.flows.sparsify import mask_specs  # noqa: E402
from sparsecc.passes import QuantizeWeightsPass  # noqa: E402
from sparsecc.passes.quantize_weights import quant_info  # noqa: E402
from sparsecc.testing import export_module  # noqa: E402

X = (torch.randn(2, 5, 64),)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 32)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 48)

    def forward(self, x):
        return self.fc(x)


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    folded = sparsecc.sparsify(export_module(Mlp(), X), {"pattern": "2:4"}, fold=True).program
    program = QuantizeWeightsPass()(folded).program
    art = OnnxBackend().lower(program, tmp_path_factory.mktemp("int8"), LowerOptions())
    return program, art


def _dq_nodes(model):
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear"]


def test_weights_are_stored_as_int8_qdq(lowered):
    program, art = lowered
    assert art.meta["int8_qdq"] == {"weights": 2, "skipped": {}}
    model = onnx.load(str(art.path("model")))
    inits = {t.name: t for t in model.graph.initializer}
    assert len(_dq_nodes(model)) == 2
    for fqn in ("fc1.weight", "fc2.weight"):
        rec = art.meta["provenance"][fqn]["quantized"]
        q = onnx.numpy_helper.to_array(inits[rec["integers"]])
        scale = onnx.numpy_helper.to_array(inits[rec["scale"]])
        assert q.dtype == np.int8 and not onnx.numpy_helper.to_array(inits[rec["zero_point"]]).any()
        # DequantizeLinear gives back the fake-quantized program's weight bit for bit
        view = [1, 1]
        view[rec["axis"]] = -1
        w = state_tensor(program, fqn).detach().numpy()
        w_onnx = q.astype(np.float32) * scale.reshape(view)
        perm = art.meta["provenance"][fqn]["perm"]
        assert np.array_equal(w_onnx.transpose(np.argsort(perm)), w)
        assert rec["float_initializer"] not in inits  # the fp32 copy is gone


def test_patterns_verified_on_the_int8_initializers(lowered):
    program, art = lowered
    checks = OnnxBackend().verify_pattern(art, list(mask_specs(program).values()))
    assert len(checks) == 2
    for c in checks:
        assert c.ok and c.eligible, c.reason  # 2:4 holds, and TensorRT sees it through the DQ node
        assert "int8 integers, read through DequantizeLinear" in c.location
    by_init = {e["initializer"]: e for e in art.meta["tensorrt_2_4"] if e.get("initializer")}
    for fqn in ("fc1.weight", "fc2.weight"):
        entry = by_init[art.meta["provenance"][fqn]["initializer"]]
        assert entry["eligible"] and "DequantizeLinear" in entry["path"]


def test_a_broken_group_in_the_integers_is_caught(lowered, tmp_path):
    program, art = lowered
    model = onnx.load(str(art.path("model")))
    name = art.meta["provenance"]["fc1.weight"]["initializer"]
    init = next(t for t in model.graph.initializer if t.name == name)
    q = onnx.numpy_helper.to_array(init).copy()
    q[q == 0] = 1  # every stored zero becomes a nonzero integer
    init.CopyFrom(onnx.numpy_helper.from_array(q, name))
    onnx.save(model, str(art.path("model")).replace(str(art.root), str(tmp_path)))
    tampered = type(art)(art.backend, tmp_path, art.files, art.inputs, art.outputs, art.meta)
    spec = mask_specs(program)["fc1.weight"]
    (c,) = OnnxBackend().verify_pattern(tampered, [spec])
    assert not c.ok and "break" in c.reason


def test_ort_parity_with_the_fake_quantized_program(tmp_path):
    """One layer, so the bound is exact to state.

    The file's DequantizeLinear yields the program's weights bit for bit
    (checked above), so ORT and torch differ only by fp32 summation order:
    per output n, |err| <= gamma_K * sum_k |w_nk| |x_k| with gamma_K ~ K * u
    (u = 2**-24), and |w_nk| <= 127 * scale_n, so
    |err_n| <= K * u * 127 * scale_n * ||x||_1 (+ the bias add, one rounding).
    """
    torch.manual_seed(1)
    layer = One()
    x = torch.randn(3, 64)
    folded = sparsecc.sparsify(export_module(layer, (x,)), {"pattern": "unstructured", "sparsity": 0.8},
                               fold=True).program
    program = QuantizeWeightsPass()(folded).program
    art = OnnxBackend().lower(program, tmp_path / "one", LowerOptions())
    assert art.meta["int8_qdq"]["weights"] == 1
    got = torch.as_tensor(OnnxBackend().load(art)([x])[0])
    with torch.no_grad():
        want = program.module()(x)
    scale = torch.as_tensor(state_tensor(program, quant_info(program, "fc.weight")["scale"]))
    u, k = 2.0 ** -24, x.shape[1]
    bound = (k * u * 127 * scale[None, :] * x.abs().sum(1, keepdim=True)
             + u * want.abs())  # the bias add
    err = (got - want).abs()
    assert torch.all(err <= bound), float((err - bound).max())


def test_qdq_can_be_turned_off(tmp_path):
    program = QuantizeWeightsPass()(export_module(Mlp(), X)).program
    art = OnnxBackend().lower(program, tmp_path / "off", LowerOptions(extra={"int8_qdq": False}))
    assert "int8_qdq" not in art.meta
    assert not _dq_nodes(onnx.load(str(art.path("model"))))


def test_static_activations_get_qdq_and_stay_within_the_rounding_bound(tmp_path):
    """Static scales: Q/DQ on the activation too (a full int8 layer for TensorRT / ORT's QDQ fusion).

    The program keeps float activations; the file rounds them to the int8
    grid of the calibrated scale s_x (no clipping: the inputs lie inside the
    calibrated range), |x - q s_x| <= s_x / 2 per entry, so per output n
    |err_n| <= (s_x / 2) * sum_k |w_nk| (+ the fp32 bound of the weight-only test).
    """
    from sparsecc.plan.quantize_options import QuantizeOptions, activation_absmax

    torch.manual_seed(2)
    x = torch.randn(4, 64)
    folded = sparsecc.sparsify(export_module(One(), (x,)), {"pattern": "2:4"}, fold=True).program
    absmax = activation_absmax(folded, ["fc.weight"], [((x * 1.1,), {})])
    program = QuantizeWeightsPass(QuantizeOptions(activations="static"), act_absmax=absmax)(folded).program
    art = OnnxBackend().lower(program, tmp_path / "static", LowerOptions())
    model = onnx.load(str(art.path("model")))
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 1
    assert len(art.meta["provenance"]["fc.weight"]["quantized"]["activation_qdq"]) == 1
    (check,) = OnnxBackend().verify_pattern(art, list(mask_specs(program).values()))
    assert check.ok and check.eligible
    got = torch.as_tensor(OnnxBackend().load(art)([x])[0])
    with torch.no_grad():
        want = program.module()(x)
    s_x = quant_info(program, "fc.weight")["act_scale"]
    w = state_tensor(program, "fc.weight").detach()
    u = 2.0 ** -24
    bound = s_x / 2 * w.abs().sum(1)[None, :] + 64 * u * (w.abs() @ x.abs().t()).t() + u * want.abs()
    err = (got - want).abs()
    assert torch.all(err <= bound), float((err - bound).max())
    assert float(err.max()) > 0  # the activations really were quantized
