"""The activation-sparse linear kernel: equal to dense on the same zeros, exact for exact zeros."""

from __future__ import annotations

import pytest
import torch

import sparsecc.kernels as kernels

SHAPES = [(1, 576, 1536), (3, 1536, 576), (8, 97, 83), (2, 64, 64), (1, 5, 3)]


@pytest.fixture(scope="module", autouse=True)
def _load():
    kernels.load()
    yield
    torch.ops.sparsecc.act_sparse_isa("avx2")


@pytest.mark.parametrize("isa", ["avx2", "portable"])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_equals_the_dense_product_of_the_thresholded_input(m, k, n, isa):
    torch.ops.sparsecc.act_sparse_isa(isa)
    g = torch.Generator().manual_seed(m * k + n)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g)
    t = float(x.abs().quantile(0.5))
    got = kernels.act_sparse_linear(x, w, b, t)
    want = torch.nn.functional.linear(torch.where(x.abs() > t, x, 0.0), w, b)
    # fp32 sums of k terms in another order: error bounded by k * eps * sum |x w|
    bound = k * 1.2e-7 * (x.abs() @ w.abs().t() + b.abs()) + 1e-6
    assert bool(((got - want).abs() <= bound).all()), float((got - want).abs().max())
    dense = kernels.act_sparse_linear(x, w, b, -1.0)
    torch.testing.assert_close(dense, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_skipping_exact_zeros_changes_no_bit(isa):
    torch.ops.sparsecc.act_sparse_isa(isa)
    g = torch.Generator().manual_seed(7)
    x = torch.relu(torch.randn(4, 6, 256, generator=g))  # about half exact zeros, 3-D input
    w, b = torch.randn(200, 256, generator=g), torch.randn(200, generator=g)
    skipped = kernels.act_sparse_linear(x, w, b, 0.0)
    everything = kernels.act_sparse_linear(x, w, b, -1.0)
    assert skipped.shape == (4, 6, 200)
    assert torch.equal(skipped, everything)
    assert torch.equal(kernels.act_sparse_linear(x, w, None, 0.0), kernels.act_sparse_linear(x, w, None, -1.0))


def test_all_inputs_skipped_gives_the_bias():
    w, b = torch.randn(16, 8), torch.randn(16)
    assert torch.equal(kernels.act_sparse_linear(torch.zeros(2, 8), w, b, 0.0), b.expand(2, 16))


def test_bad_operands_are_named():
    w = torch.randn(16, 8)
    with pytest.raises(RuntimeError, match="input has 9 features, the weight 8"):
        kernels.act_sparse_linear(torch.randn(2, 9), w)
    with pytest.raises(RuntimeError, match="bias has 3 values, expected 16"):
        kernels.act_sparse_linear(torch.randn(2, 8), w, torch.randn(3))
    with pytest.raises(RuntimeError, match="float32"):
        kernels.act_sparse_linear(torch.randn(2, 8).double(), w)
    with pytest.raises(RuntimeError, match="unknown request"):
        torch.ops.sparsecc.act_sparse_isa("neon")
