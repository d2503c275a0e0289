"""Block-sparse attention: the block mask, the reference op and the C++ kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparsecc.kernels as kernels
from sparsecc.kernels.attention import (clear_block_cache, kept_fraction, reference_block_attention,
                                        select_blocks)

MIN = torch.finfo(torch.float32).min


@pytest.fixture(scope="module", autouse=True)
def _load():
    kernels.load()
    yield
    torch.ops.sparsecc.block_attention_isa("avx2")


def _qkv(b, h, hk, sq, sk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, sq, d, generator=g), torch.randn(b, hk, sk, d, generator=g),
            torch.randn(b, hk, sk, d, generator=g))


def _dense(q, k, v, mask, causal):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    if causal and mask is not None:  # SDPA takes one or the other
        hide = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).triu(1)
        mask = mask.masked_fill(hide, float("-inf")) if mask.dtype != torch.bool else mask & ~hide
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


CASES = [  # b, h, hk, sq, sk, d, causal, mask
    (2, 4, 4, 100, 100, 32, False, None),
    (1, 6, 2, 130, 130, 64, True, None),  # grouped-query heads, short last block
    (2, 4, 4, 77, 77, 32, False, "padding"),
    (1, 4, 4, 96, 96, 40, True, "float"),  # head size not a multiple of 8
    (1, 2, 2, 48, 80, 16, False, "bool"),  # more keys than queries
]


def _mask(kind, b, sq, sk, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "padding":
        m = torch.zeros(b, 1, 1, sk)
        m[0, ..., -10:] = MIN
        return m
    if kind == "float":
        return torch.randn(1, 1, sq, sk, generator=g)
    if kind == "bool":
        m = torch.rand(b, 1, sq, sk, generator=g) > 0.3
        m[..., 0] = True
        return m
    return None


@pytest.mark.parametrize("isa", ["avx2", "portable"])
@pytest.mark.parametrize("case", CASES)
def test_keeping_every_block_is_dense_attention(case, isa):
    b, h, hk, sq, sk, d, causal, kind = case
    torch.ops.sparsecc.block_attention_isa(isa)
    q, k, v = _qkv(b, h, hk, sq, sk, d)
    mask = _mask(kind, b, sq, sk)
    kept = select_blocks(q, k, mask, causal, None, 16, 1.0)
    want = _dense(q, k, v, mask, causal)
    torch.testing.assert_close(kernels.block_attention(q, k, v, kept, mask, causal, None, 16), want,
                               rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(torch.ops.sparsecc.block_sparse_attention(
        q, k, v, mask, causal, d ** -0.5, 16, 1.0, False, 0, ""), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("isa", ["avx2", "portable"])
@pytest.mark.parametrize("case", CASES)
def test_kernel_equals_the_reference_on_the_same_random_blocks(case, isa):
    b, h, hk, sq, sk, d, causal, kind = case
    torch.ops.sparsecc.block_attention_isa(isa)
    q, k, v = _qkv(b, h, hk, sq, sk, d, seed=3)
    mask = _mask(kind, b, sq, sk)
    nq, nk = -(-sq // 16), -(-sk // 16)
    kept = torch.rand(b, h, nq, nk, generator=torch.Generator().manual_seed(5)) > 0.5
    got = kernels.block_attention(q, k, v, kept, mask, causal, 0.3, 16)
    want = reference_block_attention(q, k, v, mask, causal, 0.3, 16, kept)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    # strided inputs (the [B, S, H, D] projection seen as [B, H, S, D]) give the same result
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(kernels.block_attention(qt, k, v, kept, mask, causal, 0.3, 16), got, rtol=0, atol=0)


def test_masks_keep_the_diagonal_respect_causality_and_grow_with_tau():
    q, k, _ = _qkv(1, 4, 4, 256, 256, 32, seed=7)
    prev = None
    for tau in (0.3, 0.6, 0.9, 0.99, 1.0):
        kept = select_blocks(q, k, None, True, None, 32, tau)
        assert kept.shape == (1, 4, 8, 8)
        assert bool(kept.diagonal(dim1=-2, dim2=-1).all())
        assert not bool(kept.triu(1).any())  # no key block after the query block
        if prev is not None:
            assert bool((kept | ~prev).all())  # a larger kept mass keeps a superset
        prev = kept
    assert torch.equal(prev[0, 0], torch.ones(8, 8, dtype=torch.bool).tril())
    assert kept_fraction(prev, 256, 256, 32, is_causal=True) == pytest.approx(1.0)
    sparse = select_blocks(q, k, None, True, None, 32, 0.3)
    assert kept_fraction(sparse, 256, 256, 32, is_causal=True) < 1.0
    with_sink = select_blocks(q, k, None, True, None, 32, 0.3, sink=True)
    assert bool(with_sink[..., 0].all())


def test_blocks_the_mask_hides_are_never_kept():
    q, k, _ = _qkv(2, 2, 2, 128, 128, 16, seed=9)
    mask = torch.zeros(2, 1, 1, 128)
    mask[1, ..., 64:] = MIN  # the second sequence is padded after 64 tokens
    kept = select_blocks(q, k, mask, False, None, 32, 1.0)
    assert bool(kept[0].all()) and not bool(kept[1, ..., 2:].any()) and bool(kept[1, ..., :2].all())


def test_block_patterns_are_reused_for_n_calls():
    clear_block_cache()
    q, k, v = _qkv(1, 2, 2, 64, 64, 16, seed=11)
    args = (None, False, 0.25, 16, 0.5, False, 3, "layer0")
    first = torch.ops.sparsecc.attention_blocks(q, k, *args)
    q2, k2, _ = _qkv(1, 2, 2, 64, 64, 16, seed=12)
    again = [torch.ops.sparsecc.attention_blocks(q2, k2, *args) for _ in range(3)]
    fresh = select_blocks(q2, k2, None, False, 0.25, 16, 0.5)
    assert torch.equal(again[0], first) and torch.equal(again[1], first)  # reused for 3 calls in all
    assert torch.equal(again[2], fresh)  # the fourth call recomputes
    clear_block_cache()


@pytest.mark.parametrize("block", [0, 4, 12, 1024, True])
def test_bad_block_sizes_are_refused(block):
    q, k, v = _qkv(1, 1, 1, 32, 32, 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        select_blocks(q, k, None, False, None, block, 0.9)
    if not isinstance(block, bool):
        with pytest.raises(RuntimeError, match="block must be a multiple of 8"):
            torch.ops.sparsecc.block_attention(q, k, v, None, False, 0.3, block, torch.ones(1, 1, 1, 1, dtype=bool))


def test_unsupported_masks_and_shapes_are_refused():
    q, k, v = _qkv(1, 2, 2, 32, 32, 8)
    kept = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="dtype torch.int64"):
        select_blocks(q, k, torch.zeros(1, 1, 32, 32, dtype=torch.long), False, None, 16, 0.9)
    with pytest.raises(ValueError, match="does not broadcast"):
        select_blocks(q, k, torch.zeros(1, 1, 31, 32), False, None, 16, 0.9)
    with pytest.raises(ValueError, match="tau"):
        select_blocks(q, k, None, False, None, 16, 0.0)
    with pytest.raises(RuntimeError, match="float32 or bool"):
        torch.ops.sparsecc.block_attention(q, k, v, torch.zeros(32, 32, dtype=torch.long), False, 0.3, 16, kept)
    with pytest.raises(RuntimeError, match="kept must be bool"):
        torch.ops.sparsecc.block_attention(q, k, v, None, False, 0.3, 16, kept[:, :, :1])
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.sparsecc.block_attention(q.double(), k, v, None, False, 0.3, 16, kept)


def test_the_mask_scan_is_reused_only_for_the_same_unchanged_mask():
    clear_block_cache()
    q, k, _ = _qkv(1, 2, 2, 64, 64, 16, seed=13)
    mask = torch.zeros(1, 1, 64, 64)
    assert bool(select_blocks(q, k, mask, False, None, 16, 1.0).all())
    mask[..., 48:] = MIN  # edited in place: the version counter moves on
    assert not bool(select_blocks(q, k, mask, False, None, 16, 1.0)[..., 3].any())
    other = torch.zeros(1, 1, 64, 64)
    assert bool(select_blocks(q, k, other, False, None, 16, 1.0).all())
    clear_block_cache()
