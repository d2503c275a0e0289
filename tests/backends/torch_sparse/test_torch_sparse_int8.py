"""torch-sparse with int8 layers: the rewrite to sparsecc::int8_linear, kernel choice, saved artifact checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import sparsecc
from sparsecc import kernels
from sparsecc.backends.base import LowerOptions
from sparsecc.backends.torch_sparse.backend import TorchSparseBackend, load_sparse_program
from sparsecc.backends.torch_sparse.int8_select import parse_variant, pick
from sparsecc.backends.torch_sparse.kernel_select import KernelChoice, fixed_kernels, select_kernels
from sparsecc.backends.torch_sparse.rewrite_sparse_kernels import RewriteSparseKernelsPass, int8_targets
from sparsecc.core.pass_infra import PassError
from sparsecc.flows.sparsify import mask_specs
from sparsecc.passes import QuantizeWeightsPass
from sparsecc.passes.quantize_weights import int8_grid
from sparsecc.testing import export_module

kernels.load()
X = (torch.randn(6, 64),)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 32)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _quantized(pattern="8x8", sparsity=0.75):
    folded = sparsecc.sparsify(export_module(Mlp(), X), {"pattern": pattern, "sparsity": sparsity}, fold=True).program
    return QuantizeWeightsPass()(folded).program


def _int8_reference(program, x):
    """fc1 then fc2 with per-row int8 activations, integer sums, the op's dequantization (see test_int8_kernels)."""
    from tests.kernels.test_int8_kernels import reference

    h = x
    for name in ("fc1", "fc2"):
        q, scale = int8_grid(program, f"{name}.weight")
        h = reference(h, q, scale, program.state_dict[f"{name}.bias"].detach())
        if name == "fc1":
            h = torch.relu(h)
    return h


@pytest.mark.parametrize("kernel,block", [("int8_bsr", 8), ("int8_bsr", 4), ("int8_g4", 1)])
def test_rewrite_runs_int8_kernels_exactly(kernel, block):
    program = _quantized()
    plan = fixed_kernels(program, kernel, block)
    assert all(c.kernel == kernel for c in plan.choices)
    out = RewriteSparseKernelsPass(plan.choices)(program).program
    ops = [n.target for n in out.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.sparsecc.int8_linear.default) == 2
    assert "fc1.weight" not in out.state_dict and int8_targets("fc1.weight")[2] in out.constants
    assert out.constants[int8_targets("fc1.weight")[2]].dtype == torch.int8
    with torch.no_grad():
        got = out.module()(*X)
    assert torch.equal(got, _int8_reference(program, X[0]))


def test_int8_program_saves_loads_and_verifies_its_pattern(tmp_path):
    program = _quantized("2:4", None)
    art = TorchSparseBackend().lower(program, tmp_path / "art", LowerOptions(extra={"kernel_fixed": "int8_g4"}))
    assert {c["kernel"] for c in art.meta["kernels"]["layers"]} == {"int8_g4"}
    checks = TorchSparseBackend().verify_pattern(art, list(mask_specs(program).values()))
    assert checks and all(c.ok for c in checks), [c.reason for c in checks]
    assert all("int8" in c.layout for c in checks)
    loaded = load_sparse_program(art.path("model"))
    with torch.no_grad():
        assert torch.equal(loaded.module()(*X), _int8_reference(program, X[0]))


def test_int8_kernels_need_a_quantized_layer():
    folded = sparsecc.sparsify(export_module(Mlp(), X), {"pattern": "8x8", "sparsity": 0.75}, fold=True).program
    plan = fixed_kernels(folded, "int8_bsr", 8)
    assert all(not c.sparse and "needs a quantized linear layer" in c.reason for c in plan.choices)
    choice = KernelChoice("fc1.weight", "fc1", "linear", "linear", "int8_bsr", 8, 0.75, (128, 64), 6, "forced")
    with pytest.raises(PassError, match="has no int8 grid"):
        RewriteSparseKernelsPass([choice])(folded)
    with pytest.raises(ValueError, match="int8 BSR kernel has code for blocks"):
        fixed_kernels(folded, "int8_bsr", 2)


def test_fp32_choice_on_another_isa_passes_it_to_the_op():
    folded = sparsecc.sparsify(export_module(Mlp(), X), {"pattern": "8x8", "sparsity": 0.75}, fold=True).program
    plan = fixed_kernels(folded, "bsr", 8)
    choices = [KernelChoice(**{**c.__dict__, "isa": "portable"}) for c in plan.choices]
    out = RewriteSparseKernelsPass(choices)(folded).program
    nodes = [n for n in out.graph.nodes if n.target is torch.ops.sparsecc.sparse_linear.default]
    assert nodes and all(n.args[-1] == "portable" for n in nodes)
    with torch.no_grad():
        torch.testing.assert_close(out.module()(*X), folded.module()(*X), rtol=1e-5, atol=1e-5)


def test_select_kernels_times_int8_against_dense_int8():
    """A functional check of the measured path (one short round; not a benchmark)."""
    program = _quantized("8x8", 0.9)
    plan = select_kernels(program, rounds=1, sample_ms=0.05, blocks=(8,), include_torch=False)
    for c in plan.choices:
        keys = set(c.times_ms)
        assert {"dense", "int8_g4@" + kernels.int8_isa(), "int8_bsr8@" + kernels.int8_isa()} <= keys
        assert any(k.startswith("dense_int8") for k in keys)  # sparsecc's own dense int8, at least
        best, ref, gain = pick(c.times_ms)
        assert c.gain == pytest.approx(gain)
        if c.sparse:
            assert (c.kernel, c.block, c.isa) == parse_variant(best) and ref in c.reason
        else:
            assert "stays dense" in c.reason
    rewritten = RewriteSparseKernelsPass(plan.choices)(program).program
    with torch.no_grad():
        rewritten.module()(*X)


def test_parse_variant_names():
    assert parse_variant("int8_bsr16@avx2") == ("int8_bsr", 16, "avx2")
    assert parse_variant("int8_g4@avx512") == ("int8_g4", 1, "avx512")
    assert parse_variant("torch_csr") == ("torch_csr", 1, "")
    assert parse_variant("bsr8") == ("bsr", 8, "")
    assert pick({"dense": 2.0, "ort_dense": 1.0, "bsr8": 0.5}) == ("bsr8", "ort_dense", 2.0)
