"""sparsecc's int8 kernels equal a reference int8 matmul exactly, on every instruction set this CPU has.

The reference quantizes the activations the way the op documents (symmetric
per row, or one static scale), accumulates the integer products in int64 and
dequantizes with the same float32 operations: the kernels must match it bit
for bit, whatever the ISA, block layout, shape or sparsity.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsecc import kernels

kernels.load()


def _int8_isas() -> list[str]:
    found = []
    for name in ("avx512", "avx2", "portable"):
        try:
            kernels.int8_isa(name)
            found.append(name)
        except RuntimeError:
            pass
    return found


ISAS = _int8_isas()


def reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
              act_scale: float = 0.0) -> torch.Tensor:
    k = x.shape[-1]
    x2 = x.reshape(-1, k).float()
    if act_scale > 0:
        sx = torch.full((x2.shape[0],), act_scale, dtype=torch.float32)
    else:
        amax = x2.abs().amax(1) if k else torch.zeros(x2.shape[0])
        sx = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    qx = torch.round(x2 / sx[:, None]).clamp(-127, 127)
    acc = (qx.to(torch.int64) @ q.to(torch.int64).t()).to(torch.int32)  # exact integer accumulation
    b = bias if bias is not None else torch.zeros(q.shape[0])
    y = acc.to(torch.float32) * (sx[:, None] * scale[None, :]) + b
    return y.reshape(*x.shape[:-1], q.shape[0])


def _weight(out_f: int, in_f: int, block: tuple[int, int], density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    if block == (1, 4):  # the unstructured layout: any entry may be zero
        return w * (torch.rand(out_f, in_f, generator=g) < density)
    keep = torch.rand(out_f // block[0], in_f // block[1], generator=g) < density
    return w * keep.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    block=st.sampled_from(kernels.INT8_BLOCKS),
    rows=st.integers(1, 5),
    cols=st.integers(1, 5),
    tokens=st.one_of(st.integers(0, 9), st.integers(10, 150)),  # 1..8: the few-token VNNI path
    density=st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5, 1.0]),
    bias=st.booleans(),
    static=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_int8_linear_equals_reference_exactly(isa, block, rows, cols, tokens, density, bias, static, seed):
    out_f, in_f = rows * max(block[0], 4) * 2, cols * block[1] * 2
    q, scale = kernels.quantize_per_channel(_weight(out_f, in_f, block, density, seed))
    w = kernels.compress_int8(q, scale, block)
    assert torch.equal(w.to_dense_int(), q.to(torch.int32))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(tokens, in_f, generator=g) * 3
    b = torch.randn(out_f, generator=g) if bias else None
    act = 0.02 if static else 0.0  # static: some activations clip at +-127
    got = kernels.int8_linear(x, w, b, act_scale=act, isa=isa)
    want = reference(x, q, scale, b, act)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got, want), f"max diff {float((got - want).abs().max()) if got.numel() else 0}"


@pytest.mark.parametrize("isa", ISAS)
def test_dense_int8_and_leading_dims(isa):
    q, scale = kernels.quantize_per_channel(torch.randn(24, 40))
    x = torch.randn(2, 3, 40).transpose(0, 1)  # [3, 2, 40], not contiguous
    got = kernels.dense_int8_linear(x, q, scale, isa=isa)
    assert got.shape == (3, 2, 24)
    assert torch.equal(got, reference(x, q, scale, None))


def test_int8_error_is_within_the_quantization_bound():
    """Against the float product of the dequantized weight: |err| <= sum_k |w_k| * s_x / 2 per output."""
    w = _weight(64, 128, (8, 8), 0.3, 7)
    q, scale = kernels.quantize_per_channel(w)
    wq = q.float() * scale[:, None]
    x = torch.randn(9, 128)
    got = kernels.int8_linear(x, kernels.compress_int8(q, scale, 8))
    want = x.double() @ wq.double().t()
    sx = x.abs().amax(1, keepdim=True).double() / 127
    bound = sx * wq.abs().double().sum(1)[None, :] / 2 + 1e-4
    assert torch.all((got.double() - want).abs() <= bound)


def test_isa_override_follows_the_fp32_choice():
    start = kernels.isa()
    try:
        for name in ISAS:
            kernels.isa(name)
            assert kernels.int8_isa() == name  # "" follows the loader's (overridable) choice
    finally:
        kernels.isa(start)
    assert kernels.int8_isa("portable") == "portable"


def test_bad_inputs_name_the_problem():
    q, scale = kernels.quantize_per_channel(torch.randn(16, 16))
    w = kernels.compress_int8(q, scale, 8)
    x = torch.randn(4, 16)
    op = torch.ops.sparsecc.int8_linear
    with pytest.raises(RuntimeError, match="values must be int8"):
        op(x, w.crow_indices, w.col_indices, w.values.float(), w.scale, w.row_sums, None, 16, 0.0, "")
    with pytest.raises(RuntimeError, match="unknown instruction set 'sse9'"):
        kernels.int8_linear(x, w, isa="sse9")
    with pytest.raises(RuntimeError, match="act_scale must be >= 0"):
        kernels.int8_linear(x, w, act_scale=-1.0)
    with pytest.raises(RuntimeError, match="crow_indices has 3 entries, expected 5"):
        op(x, w.crow_indices, w.col_indices, w.values, torch.ones(32), torch.zeros(32, dtype=torch.int32), None,
           32, 0.0, "")
    with pytest.raises(RuntimeError, match="input must be float32"):
        kernels.int8_linear(x.double(), w)
    with pytest.raises(ValueError, match="int8 kernel has code for blocks"):
        kernels.compress_int8(q, scale, 2)
    with pytest.raises(ValueError, match="block 8x8 does not divide"):
        kernels.compress_int8(*kernels.quantize_per_channel(torch.randn(12, 16)), 8)


def test_fake_kernel_gives_shapes_under_export():
    q, scale = kernels.quantize_per_channel(torch.randn(24, 16))
    w = kernels.compress_int8(q, scale, (1, 4))

    class M(torch.nn.Module):
        def forward(self, x):
            return kernels.int8_linear(x, w)

    ep = torch.export.export(M(), (torch.randn(3, 16),))
    node = next(n for n in ep.graph.nodes if n.target is torch.ops.sparsecc.int8_linear.default)
    assert tuple(node.meta["val"].shape) == (3, 24)


def test_fp32_kernels_take_an_isa_per_call():
    """Kernel choice times each ISA per layer shape: the fp32 ops accept one per call, same results."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 64, generator=g) * (torch.rand(32, 64, generator=g) < 0.2)
    x = torch.randn(5, 64, generator=g)
    cw = kernels.compress(w, 8)
    want = torch.nn.functional.linear(x.double(), w.double())
    for name in ISAS:
        got = kernels.sparse_linear(x, cw, isa=name)
        assert float((got.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())
    with pytest.raises(RuntimeError, match="unknown instruction set 'sse9'"):
        kernels.sparse_linear(x, cw, isa="sse9")
    start = kernels.isa()
    kernels.sparse_linear(x, cw, isa="portable")
    assert kernels.isa() == start  # a per-call ISA leaves the global choice alone


@pytest.mark.parametrize("block", [8, 16])
def test_few_token_path_every_token_count(block):
    """1..8 tokens on 8x8 / 16x16 blocks take the block-vectorized VNNI path (where the CPU has VNNI)."""
    q, scale = kernels.quantize_per_channel(_weight(64, 96 if block == 8 else 128, (block, block), 0.4, block))
    w = kernels.compress_int8(q, scale, block)
    bias = torch.randn(64)
    for tokens in range(1, 11):
        x = torch.randn(tokens, q.shape[1])
        for isa in ISAS:
            assert torch.equal(kernels.int8_linear(x, w, bias, isa=isa), reference(x, q, scale, bias)), (tokens, isa)
