"""sparsecc's CPU sparse kernels against the dense product, on every instruction set this CPU has."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsecc import kernels

kernels.load()



def _available_isas() -> list[str]:
    start = kernels.isa()
    found = []
    for name in ("avx512", "avx2", "portable"):
        try:
            kernels.isa(name)
            found.append(name)
        except RuntimeError:
            pass
    kernels.isa(start)
    return found


ISAS = _available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    start = kernels.isa()
    kernels.isa(request.param)
    yield request.param
    kernels.isa(start)


def _sparse_weight(out_f: int, in_f: int, block: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    keep = torch.rand(out_f // block, in_f // block, generator=g) < density
    keep = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return w * keep


def _assert_exact(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> None:
    """fp32 sums in another order: within 1e-5 of the output's scale of the float64 product."""
    want = torch.nn.functional.linear(x.double(), w.double(), None if bias is None else bias.double())
    assert got.dtype == torch.float32 and got.shape == want.shape
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got.double() - want).abs().max()) if want.numel() else 0.0
    assert err <= 1e-5 * scale + 1e-6, f"max abs err {err} at output scale {scale}"


# the isa fixture holds for every example of one parametrisation, as intended
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    block=st.sampled_from([1, 2, 4, 8, 16]),
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    tokens=st.integers(0, 140),
    density=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_matches_dense_product(isa, block, rows, cols, tokens, density, bias, seed):
    out_f, in_f = rows * block * 3, cols * block * 2
    w = _sparse_weight(out_f, in_f, block, density, seed)
    cw = kernels.compress(w, block)
    assert torch.equal(cw.to_dense(), w)
    x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(seed + 1))
    b = torch.randn(out_f) if bias else None
    _assert_exact(kernels.sparse_linear(x, cw, b), x, w, b)


@pytest.mark.parametrize("kernel", ["torch_csr", "torch_bsr"])
def test_torch_mkl_kernels_match_dense_product(kernel):
    block = 1 if kernel == "torch_csr" else 8
    w = _sparse_weight(64, 128, block, 0.2, 0)
    x = torch.randn(2, 5, 128)
    b = torch.randn(64)
    got = kernels.sparse_linear(x, kernels.compress(w, block), b, kernel=kernel)
    _assert_exact(got.reshape(10, 64), x.reshape(10, 128), w, b)


def test_leading_dims_and_strided_input(isa):
    w = _sparse_weight(48, 32, 8, 0.4, 3)
    x = torch.randn(3, 32, 7).transpose(1, 2)  # [3, 7, 32], not contiguous
    got = kernels.sparse_linear(x, kernels.compress(w, 8))
    assert got.shape == (3, 7, 48)
    _assert_exact(got.reshape(21, 48), x.reshape(21, 32), w, None)


@pytest.mark.parametrize("block", [1, 4, 8])
@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (14, 14)])
def test_conv1x1_matches_conv2d(isa, block, hw):
    w = _sparse_weight(32, 48, block, 0.3, block)
    x = torch.randn(2, 48, *hw)
    b = torch.randn(32)
    for kernel in (None, "torch_csr" if block == 1 else "torch_bsr"):
        got = kernels.sparse_conv1x1(x, kernels.compress(w, block), b, kernel=kernel)
        want = torch.nn.functional.conv2d(x.double(), w.double()[:, :, None, None], b.double())
        err = float((got.double() - want).abs().max())
        assert err <= 1e-5 * float(want.abs().max()), (kernel, err)


def test_compress_stores_only_nonzero_blocks():
    w = torch.zeros(16, 32)
    w[8:16, 0:8] = 1.0
    w[0, 31] = 2.0
    cw = kernels.compress(w, 8)
    assert cw.values.shape == (2, 8, 8)
    assert cw.crow_indices.tolist() == [0, 1, 2]
    assert cw.col_indices.tolist() == [3, 0]
    assert cw.crow_indices.dtype == torch.int32


def test_bad_inputs_name_the_problem():
    w = kernels.compress(_sparse_weight(16, 16, 8, 0.5, 0), 8)
    x = torch.randn(4, 16)
    with pytest.raises(RuntimeError, match="unknown kernel 'dense'"):
        torch.ops.sparsecc.sparse_linear(x, w.crow_indices, w.col_indices, w.values, None, 16, "dense")
    with pytest.raises(RuntimeError, match="kernel 'csr' does not match values of a BSR weight"):
        torch.ops.sparsecc.sparse_linear(x, w.crow_indices, w.col_indices, w.values, None, 16, "csr")
    with pytest.raises(RuntimeError, match="must be int32"):
        torch.ops.sparsecc.sparse_linear(x, w.crow_indices.long(), w.col_indices, w.values, None, 16, "bsr")
    with pytest.raises(RuntimeError, match="input must be float32"):
        kernels.sparse_linear(x.double(), w)
    with pytest.raises(RuntimeError, match="crow_indices has 3 entries, expected 5"):
        torch.ops.sparsecc.sparse_linear(x, w.crow_indices, w.col_indices, w.values, None, 32, "bsr")
    with pytest.raises(ValueError, match="block 3 does not divide the weight"):
        kernels.compress(torch.randn(16, 16), 3)
    with pytest.raises(RuntimeError, match="unknown instruction set 'sse9'"):
        kernels.isa("sse9")


def test_fake_kernels_give_shapes_under_export():
    w = kernels.compress(_sparse_weight(24, 16, 8, 0.5, 0), 8)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("crow", w.crow_indices)
            self.register_buffer("col", w.col_indices)
            self.register_buffer("val", w.values)

        def forward(self, x):
            return torch.ops.sparsecc.sparse_linear(x, self.crow, self.col, self.val, None, 24, "bsr")

    x = torch.randn(2, 5, 16)
    ep = torch.export.export(M(), (x,), dynamic_shapes=({1: torch.export.Dim("seq")},))
    out = [n for n in ep.graph.nodes if n.op == "call_function"][-1].meta["val"]
    assert tuple(out.shape[::2]) == (2, 24)
    torch.testing.assert_close(ep.module()(x), M()(x), rtol=0, atol=0)
