"""ExecuTorch with XNNPACK's dynamically quantized int8 linear, for programs with ``quantize: int8 dynamic``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

pytest.importorskip("executorch")

import sparsecc  # noqa: E402
from sparsecc.backends.base import LowerOptions, Support  # noqa: E402
from sparsecc.backends.executorch import ExecuTorchBackend  # noqa: E402
from sparsecc.backends.executorch.checks import INT8_REASON  # noqa: E402
from sparsecc.backends.executorch.int8 import StaticActivationsError, int8_parity_tolerance  # noqa: E402
from sparsecc.backends.executorch.pte import PteReader  # noqa: E402
from sparsecc.core.program import ProgramEditor  # noqa: E402
from sparsecc.flows.sparsify import mask_specs  # noqa: E402
from sparsecc.passes import QuantizeWeightsPass  # noqa: E402
from sparsecc.passes.quantize_weights import int8_grid, quant_info  # noqa: E402
from sparsecc.plan.quantize_options import QuantizeOptions  # noqa: E402
from sparsecc.testing import export_module  # noqa: E402
from sparsecc.verify.parity import PARITY_ATOL, PARITY_RTOL, compare  # noqa: E402

X = (torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)),)
FQNS = ("fc1.weight", "fc2.weight", "fc3.weight")


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 96)
        self.fc3 = nn.Linear(96, 32)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _quantized(activations: str = "dynamic"):
    folded = sparsecc.sparsify(export_module(Mlp(), X), {"pattern": "2:4"}, fold=True).program
    absmax = {f: 4.0 for f in FQNS} if activations == "static" else None
    return QuantizeWeightsPass(QuantizeOptions(activations=activations), act_absmax=absmax)(folded).program


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    program = _quantized()
    backend = ExecuTorchBackend()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        art = backend.lower(program, tmp_path_factory.mktemp("et_int8"), LowerOptions())
    return program, backend, art


def _parity(backend, art, program, inputs=X):
    got = backend.load(art)(list(inputs))
    with torch.no_grad():
        want = [program.module()(*inputs)]
    return compare(got, want, "example", backend.parity_rtol, backend.parity_atol)


def test_parity_with_the_derived_tolerance(lowered):
    program, backend, art = lowered
    assert art.meta["int8"]["depth"] == 3
    rtol, atol = int8_parity_tolerance(3)
    assert (backend.parity_rtol, backend.parity_atol) == (rtol, atol) and rtol > PARITY_RTOL
    assert art.meta["parity_tol"] == {"rtol": rtol, "atol": atol}
    case = _parity(backend, art, program)
    assert case["ok"], case
    # int8 activations do move the outputs: beyond fp32 rounding, within the int8 bound
    assert case["outputs"][0]["max_abs_err"] > PARITY_ATOL + PARITY_RTOL * case["outputs"][0]["scale"]


def test_linears_delegated_as_dynamic_int8(lowered):
    _program, _backend, art = lowered
    by_op = art.meta["delegation"]["by_op"]
    assert by_op["aten.linear.default"] == {"xnnpack": 3, "portable": 0}
    for op in ("choose_qparams.tensor", "quantize_per_tensor.tensor", "dequantize_per_tensor.tensor",
               "dequantize_per_channel.default"):
        assert by_op[f"quantized_decomposed.{op}"] == {"xnnpack": 3, "portable": 0}
    assert art.meta["delegation"]["summary"]["portable_nodes"] == 0
    # In the .pte: each fully connected reads per-token dynamic int8 input and per-channel int8 filter.
    reader = PteReader.open(art.path("model"))
    graph = reader.xnnpack_graph(0)
    fcs = [n["xnode_union"] for n in graph["xnodes"] if n["xnode_union_type"] == "XNNFullyConnected"]
    assert len(fcs) == 3
    for fc in fcs:
        x = graph["xvalues"][fc["input1_id"]]["xvalue_union"]
        assert x["tensor_value"]["datatype"] == "xnn_datatype_qdint8"
        assert x["quant_params_type"] == "PerTokenDynamicQuant"
        w = reader.xnnpack_quant_params(0, fc["filter_id"])
        assert (w["type"], w["datatype"]) == ("PerChannelQuant", "xnn_datatype_qcint8")


def test_program_integers_and_scales_stored_exactly(lowered):
    program, backend, art = lowered
    layers = art.meta["int8"]["layers"]
    assert set(layers) == set(FQNS)
    for fqn in FQNS:
        rec = layers[fqn]
        assert rec["ok"] and rec["integers_equal"] and rec["scales_equal"], rec
        entry = art.meta["weights"][fqn]
        assert entry["where"] == "xnnpack" and entry["dtype"] == "torch.int8" and entry["verbatim"]
        q, _ = int8_grid(program, fqn)
        assert rec["zeros"] == int((q == 0).sum()) >= q.numel() // 2  # 2:4 zeros stay exact zeros
    checks = {c.fqn: c for c in backend.check_artifact(program, art)}
    assert all(checks[f].support is Support.DENSE and checks[f].reason == INT8_REASON for f in FQNS)


def test_pattern_verified_on_the_stored_int8(lowered):
    program, backend, art = lowered
    checks = backend.verify_pattern(art, list(mask_specs(program).values()))
    assert len(checks) == 3 and all(c.ok for c in checks), checks
    assert all("XNNPACK delegate" in c.location for c in checks)


def test_perturbed_scales_fail_parity(lowered, tmp_path):
    """Scales off by 5% in the artifact: the parity check with the same tolerance catches it."""
    program, backend, _art = lowered
    ed = ProgramEditor(program)
    for fqn in FQNS:
        target = quant_info(program, fqn)["scale"]
        ed.set_tensor(target, ed.tensor(target) * 1.05)
    bad = ed.finish()
    # The weights no longer sit on the perturbed grid: lowering keeps them fp32 ...
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        art = ExecuTorchBackend().lower(bad, tmp_path / "skip", LowerOptions())
    assert set(art.meta["int8"]["skipped"]) == set(FQNS) and not art.meta["int8"]["layers"]
    # ... and an artifact built from perturbed scales on the int8 grid fails parity against the program.
    ed2 = ProgramEditor(program)
    for fqn in FQNS:
        q, s = int8_grid(program, fqn)
        ed2.set_tensor(quant_info(program, fqn)["scale"], s * 1.05)
        ed2.set_tensor(fqn, q.float() * (s * 1.05).reshape(-1, 1))
    shifted = ed2.finish()
    for fqn in FQNS:  # node metadata travels with the editor's graph copy
        assert quant_info(shifted, fqn) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        art2 = backend.lower(shifted, tmp_path / "shifted", LowerOptions())
    assert set(art2.meta["int8"]["layers"]) == set(FQNS)
    case = _parity(backend, art2, program)
    assert not case["ok"], case


def test_static_activations_refused(tmp_path):
    program = _quantized("static")
    with pytest.raises(StaticActivationsError, match="activations: static"):
        ExecuTorchBackend().lower(program, tmp_path, LowerOptions())
