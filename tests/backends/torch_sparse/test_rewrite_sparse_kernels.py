"""RewriteSparseKernelsPass: golden graphs, parity with the masked dense program on the zoo, errors."""

from __future__ import annotations

import pytest
import torch

import sparsecc
from sparsecc import kernels
from sparsecc.backends.torch_sparse.kernel_select import KernelChoice, find_kernel_layers, fixed_kernels, select_kernels
from sparsecc.core.pass_infra import PreconditionError
from sparsecc.flows.pipelines import fold_pipeline
from sparsecc.backends.torch_sparse.rewrite_sparse_kernels import RewriteSparseKernelsPass
from sparsecc.backends.torch_sparse.rewrite_sparse_kernels import compressed_targets
from sparsecc.core.program import load_program, save_program, tensor_leaves
from sparsecc.testing import assert_same_structure, check_golden, normalized_ops

kernels.load()
RTOL = 1e-5  # fp32, an exact transform up to summation order: relative to each output's largest magnitude


def _fixed(kernel: str = "bsr", block: int = 8):
    return lambda program: RewriteSparseKernelsPass(fixed_kernels(program, kernel, block).choices)


def _prune_all(pattern: str, sparsity: float):
    def prepare(program):
        return sparsecc.sparsify(program, {"pattern": pattern, "sparsity": sparsity, "layers": {"min_params": 1}},
                                 fold=True).program
    return prepare


# -- golden graphs ---------------------------------------------------------------


def _half_blocks(out_f: int, in_f: int, block: int = 8) -> list[torch.Tensor]:
    """BSR arrays of an [out, in] weight with every other block pruned, as 8x8 at 50% leaves it.

    The expected graphs hold them as plain tensors (lifted constants, as the pass
    lifts the compressed weights), so their shapes match the rewritten program's.
    """
    keep = torch.zeros(out_f // block, in_f // block)
    keep.view(-1)[::2] = 1
    w = kernels.compress(keep.repeat_interleave(block, 0).repeat_interleave(block, 1), block)
    return [w.crow_indices, w.col_indices, w.values]


class Linear(torch.nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.fc = torch.nn.Linear(32, 16, bias=bias)

    def forward(self, x):
        return torch.relu(self.fc(x))


class SparseLinear(torch.nn.Module):
    """What `Linear` becomes: the same graph with the linear as sparsecc's op."""

    def __init__(self):
        super().__init__()
        self.crow, self.col, self.val = _half_blocks(16, 32)
        self.bias = torch.nn.Parameter(torch.zeros(16))

    def forward(self, x):
        return torch.relu(torch.ops.sparsecc.sparse_linear(x, self.crow, self.col, self.val, self.bias, 16, "bsr"))


class MatmulWeight(torch.nn.Module):
    """``x @ W`` with ``W [in, out]``, and ``x @ V.T`` with ``V [out, in]``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(32, 16))
        self.v = torch.nn.Parameter(torch.randn(16, 16))

    def forward(self, x):
        return (x @ self.w) @ self.v.t()


class SparseMatmulWeight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = _half_blocks(16, 32)  # W [32, 16] as [out, in]
        self.v = _half_blocks(16, 16)

    def forward(self, x):
        y = torch.ops.sparsecc.sparse_linear(x, *self.w, None, 16, "bsr")
        return torch.ops.sparsecc.sparse_linear(y, *self.v, None, 16, "bsr")


class Convs(torch.nn.Module):
    def __init__(self, kernel_size=1, stride=1, groups=1):
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 32, kernel_size, stride=stride, groups=groups)

    def forward(self, x):
        return self.conv(x).relu()


class SparseConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.crow, self.col, self.val = _half_blocks(32, 16)
        self.bias = torch.nn.Parameter(torch.zeros(32))

    def forward(self, x):
        return torch.ops.sparsecc.sparse_conv1x1(x, self.crow, self.col, self.val, self.bias, 32, "bsr").relu()


def test_linear_becomes_sparse_linear():
    program = check_golden(Linear(), _fixed(), SparseLinear(), (torch.randn(4, 32),),
                           prepare=_prune_all("8x8", 0.5))
    assert "fc.weight" not in program.state_dict  # only the compressed weight is kept
    assert set(compressed_targets("fc.weight")) <= set(program.constants)


def test_matmul_with_a_constant_weight_becomes_sparse_linear():
    check_golden(MatmulWeight(), _fixed(), SparseMatmulWeight(), (torch.randn(3, 5, 32),),
                 prepare=_prune_all("8x8", 0.5))


def test_conv1x1_becomes_sparse_conv1x1():
    check_golden(Convs(), _fixed(), SparseConv(), (torch.randn(2, 16, 5, 5),), prepare=_prune_all("8x8", 0.5))


@pytest.mark.parametrize("module", [Convs(kernel_size=3), Convs(stride=2), Convs(groups=2)],
                         ids=["3x3", "stride2", "grouped"])
def test_other_convolutions_stay(module):
    check_golden(module, _fixed(), module, (torch.randn(2, 16, 6, 6),))


class OddLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(24, 12)

    def forward(self, x):
        return self.fc(x)


def test_block_that_does_not_divide_stays_dense():
    module = OddLinear()
    program = check_golden(module, _fixed("bsr", 8), module, (torch.randn(2, 24),))
    plan = fixed_kernels(program, "bsr", 8)
    assert not plan.choices[0].sparse
    assert plan.choices[0].reason == "stays dense: block 8 does not divide the weight [12, 24]"


# -- parity on the zoo -----------------------------------------------------------------


ZOO = ["mlp", "resnet", "mobilenet", "vit", "bert", "llama", "hf-bert-tiny", "hf-llama-tiny"]
# Every model runs the two kernels that matter (CSR for unstructured, BSR 8x8); one model runs
# every block size and torch's MKL path too, to keep the suite fast.
FORMATS = [("unstructured", 0.8, "csr", 1), ("8x8", 0.8, "bsr", 8)]
ALL_FORMATS = FORMATS + [("4x4", 0.7, "bsr", 4), ("16x16", 0.9, "bsr", 16), ("2x2", 0.6, "bsr", 2),
                         ("unstructured", 0.9, "torch_csr", 1), ("8x8", 0.9, "torch_bsr", 8)]


def _assert_parity(got, want, label: str) -> None:
    g, w = tensor_leaves(got), tensor_leaves(want)
    assert len(g) == len(w), label
    for i, (a, b) in enumerate(zip(g, w)):
        if not b.is_floating_point():
            assert torch.equal(a, b), f"{label} output {i}"
            continue
        scale = float(b.abs().max())
        err = float((a.double() - b.double()).abs().max())
        assert err <= RTOL * scale + 1e-7, f"{label} output {i}: max abs err {err} at scale {scale}"


@pytest.mark.parametrize("name", ZOO)
def test_zoo_parity_with_the_masked_dense_program(zoo, name):
    spec, program = zoo(name)
    rewritten_any = False
    for pattern, sparsity, kernel, block in ALL_FORMATS if name == "mlp" else FORMATS:
        recipe = {"pattern": pattern, "sparsity": sparsity, "incompatible": "skip"}
        masked = sparsecc.sparsify(program, recipe).program  # masks in the graph: the reference
        folded = fold_pipeline()(masked).program
        plan = fixed_kernels(folded, kernel, block)
        result = RewriteSparseKernelsPass(plan.choices)(folded)
        ops = normalized_ops(result.program)
        n_sparse = sum(op.startswith("sparsecc.") for op in ops)
        assert n_sparse == len(plan.sparse)
        rewritten_any |= n_sparse > 0
        module, reference = result.program.module(), masked.module()
        inputs = [(spec.example_args, spec.example_kwargs)]
        if spec.make_inputs is not None and spec.dynamic_shapes is not None:
            inputs.append(spec.make_inputs(3, 5))  # another allowed shape
        with torch.no_grad():
            for args, kwargs in inputs:
                _assert_parity(module(*args, **kwargs), reference(*args, **kwargs), f"{name} {pattern} {kernel}")
    assert rewritten_any, f"{name}: no layer was rewritten under any format"


def test_saved_program_loads_and_runs_the_kernels(tmp_path, zoo):
    spec, program = zoo("bert")
    folded = sparsecc.sparsify(program, {"pattern": "8x8", "sparsity": 0.9}, fold=True).program
    rewritten = RewriteSparseKernelsPass(fixed_kernels(folded, "bsr", 8).choices)(folded).program
    save_program(rewritten, tmp_path / "p.pt2")
    loaded = load_program(tmp_path / "p.pt2")
    assert_same_structure(loaded, rewritten, "saved and loaded")
    with torch.no_grad():
        want = rewritten.module()(*spec.example_args, **spec.example_kwargs)
        got = loaded.module()(*spec.example_args, **spec.example_kwargs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# -- selection ---------------------------------------------------------------------


def test_select_kernels_records_measurements_and_reasons(zoo):
    _, program = zoo("mlp")
    folded = sparsecc.sparsify(program, {"pattern": "8x8", "sparsity": 0.9, "layers": {"min_params": 1}},
                               fold=True).program
    plan = select_kernels(folded, rounds=3, sample_ms=0.5, include_torch=False)
    assert plan.threads == torch.get_num_threads() and plan.isa == kernels.isa()
    assert len(plan.choices) == len(find_kernel_layers(folded)[0])
    for c in plan.choices:
        if c.sparsity < 0.3:
            assert not c.sparse and "below the 30%" in c.reason and not c.times_ms
            continue
        assert {"dense", "csr", "bsr8"} <= set(c.times_ms)
        # the reference is the fastest dense product: torch's, or ONNX Runtime's when installed
        dense = min((k for k in c.times_ms if k in ("dense", "ort_dense")), key=c.times_ms.get)
        best = min((k for k in c.times_ms if k not in ("dense", "ort_dense")), key=c.times_ms.get)
        assert c.gain == pytest.approx(c.times_ms[dense] / c.times_ms[best])
        if c.sparse:
            assert c.gain >= 1.1 and c.reason.startswith(f"runs {c.label}: measured")
            assert best.startswith(c.kernel)
        else:
            assert c.gain < 1.1 and c.reason.startswith("stays dense: fastest sparse kernel")
    rewritten = RewriteSparseKernelsPass(plan.choices)(folded).program
    assert sum(op.startswith("sparsecc.") for op in normalized_ops(rewritten)) == len(plan.sparse)


def test_dense_program_is_not_measured(zoo):
    _, program = zoo("mlp")
    plan = select_kernels(program)
    assert plan.choices and all(not c.sparse and not c.times_ms for c in plan.choices)
    assert RewriteSparseKernelsPass(plan.choices)(program).modified is False


# -- errors ------------------------------------------------------------------------


def test_choice_for_a_layer_without_a_kernel_names_it(zoo):
    _, program = zoo("resnet")
    bad = KernelChoice(fqn="conv1.weight", layer="conv1", node="conv2d", op="conv1x1", kernel="csr", block=1,
                       sparsity=0.5, shape=(16, 27), tokens=1, reason="")
    with pytest.raises(PreconditionError, match="conv1.weight cannot run a sparse kernel: convolution kernel is not 1x1"):
        RewriteSparseKernelsPass([bad])(program)


def test_unfolded_masks_are_refused(zoo):
    _, program = zoo("mlp")
    masked = sparsecc.sparsify(program, {"pattern": "8x8", "sparsity": 0.5}).program
    _, why = find_kernel_layers(masked)
    assert any("mask is not folded" in r for r in why.values())


def test_unknown_kernel_and_margin_are_refused(zoo):
    _, program = zoo("mlp")
    with pytest.raises(ValueError, match="unknown kernel 'dense8'"):
        fixed_kernels(program, "dense8")
    with pytest.raises(ValueError, match="BSR kernel has code for blocks"):
        fixed_kernels(program, "bsr", 3)
    with pytest.raises(ValueError, match="margin must be at least 1.0"):
        select_kernels(program, margin=0.9)
