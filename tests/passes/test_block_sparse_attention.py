"""BlockSparseAttentionPass: golden graphs for both attention forms, parity, and the torch-sparse kernel."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsecc.backends import LowerOptions, get_backend
from sparsecc.models import get_model
from sparsecc.passes import BlockSparseAttentionPass
from sparsecc.testing import check_golden, export_module

B, S, E, H, D = 2, 40, 32, 4, 8
OP = torch.ops.sparsecc.block_sparse_attention


class _Proj(nn.Module):
    def __init__(self, kv_heads: int = H):
        super().__init__()
        torch.manual_seed(0)
        self.q = nn.Linear(E, H * D)
        self.k = nn.Linear(E, kv_heads * D)
        self.v = nn.Linear(E, kv_heads * D)
        self.kv_heads = kv_heads

    def heads(self, x):
        q = self.q(x).view(B, S, H, D).transpose(1, 2)
        k = self.k(x).view(B, S, self.kv_heads, D).transpose(1, 2)
        v = self.v(x).view(B, S, self.kv_heads, D).transpose(1, 2)
        return q, k, v


class EagerAttn(_Proj):
    """The form transformers' eager attention exports: matmul, scale, mask, softmax, dropout, matmul."""

    def __init__(self, probs_out: bool = False, mask_dtype=torch.float32):
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.probs_out, self.mask_dtype = probs_out, mask_dtype

    def forward(self, x, mask):
        q, k, v = self.heads(x)
        mask = mask if self.mask_dtype == torch.float32 else mask.to(self.mask_dtype)
        s = torch.matmul(q, k.transpose(2, 3)) * (1 / math.sqrt(D)) + mask
        p = self.drop(torch.softmax(s, -1))
        out = torch.matmul(p, v)
        return (out, p) if self.probs_out else out


class EagerExpected(_Proj):
    def forward(self, x, mask):
        q, k, v = self.heads(x)
        return OP(q, k, v, mask, False, 1 / math.sqrt(D), 16, 0.9, False, 0, "attn")


class GqaAttn(_Proj):
    """Llama's eager attention: keys and values repeated over the query heads of their group."""

    def __init__(self):
        super().__init__(kv_heads=2)

    def forward(self, x):
        q, k, v = self.heads(x)
        k = k[:, :, None].expand(B, 2, 2, S, D).reshape(B, H, S, D)
        v = v[:, :, None].expand(B, 2, 2, S, D).reshape(B, H, S, D)
        p = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * 0.5, dim=-1, dtype=torch.float32)
        return torch.matmul(p, v)


class GqaExpected(_Proj):
    def __init__(self):
        super().__init__(kv_heads=2)

    def forward(self, x):
        q, k, v = self.heads(x)
        return OP(q, k, v, None, False, 0.5, 16, 0.9, False, 0, "attn")


class SdpaAttn(_Proj):
    def forward(self, x):
        return F.scaled_dot_product_attention(*self.heads(x), is_causal=True)


class SdpaExpected(_Proj):
    def forward(self, x):
        q, k, v = self.heads(x)
        return OP(q, k, v, None, True, 1 / math.sqrt(D), 16, 0.9, False, 0, "attn")


class Wrap(nn.Module):
    """Attention in a submodule, so the call site is named by its module path, ``attn``."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, *args):
        return self.attn(*args)


def _x():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, S, E, generator=g)


def _mask():
    m = torch.zeros(B, 1, 1, S)
    m[1, ..., -5:] = torch.finfo(torch.float32).min
    return m


def test_golden_eager_attention_becomes_the_op():
    check_golden(Wrap(EagerAttn()), BlockSparseAttentionPass(16, 0.9), Wrap(EagerExpected()), (_x(), _mask()))


def test_golden_grouped_query_heads_are_shared_not_repeated():
    check_golden(Wrap(GqaAttn()), BlockSparseAttentionPass(16, 0.9), Wrap(GqaExpected()), (_x(),))


def test_golden_sdpa_keeps_causality_and_its_default_scale():
    check_golden(Wrap(SdpaAttn()), BlockSparseAttentionPass(16, 0.9), Wrap(SdpaExpected()), (_x(),))


def test_golden_leaves_attention_alone_when_it_cannot_take_it():
    before = Wrap(EagerAttn(probs_out=True))  # the probabilities are an output
    pass_ = BlockSparseAttentionPass(16, 0.9)
    check_golden(before, pass_, before, (_x(), _mask()))
    assert list(pass_.skipped.values()) == ["probabilities read elsewhere"]
    before = Wrap(EagerAttn(mask_dtype=torch.int64))  # an integer additive mask
    check_golden(before, pass_, before, (_x(), _mask()))
    assert "dtype torch.int64" in next(iter(pass_.skipped.values()))
    check_golden(Wrap(SdpaAttn()), BlockSparseAttentionPass(16, 0.9, exclude=["attn"]), Wrap(SdpaAttn()), (_x(),))


@pytest.mark.parametrize("kwargs", [{"block": 12}, {"block": 0}, {"tau": 0.0}, {"tau": 1.5}, {"reuse": -1}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ValueError):
        BlockSparseAttentionPass(**kwargs)


def test_keeping_all_blocks_computes_what_the_model_computed():
    for model, args in ((Wrap(EagerAttn()), (_x(), _mask())), (Wrap(GqaAttn()), (_x(),)), (Wrap(SdpaAttn()), (_x(),))):
        program = export_module(model, args)
        sparse = BlockSparseAttentionPass(16, 1.0)(program).program
        torch.testing.assert_close(sparse.module()(*args), model(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["hf-bert-tiny", "hf-llama-tiny"])
def test_real_attention_graphs_are_found_and_lowered_to_the_kernel(name, tmp_path):
    spec = get_model(name)
    program = export_module(spec.model, spec.example_args) if not spec.example_kwargs else \
        torch.export.export(spec.model.eval(), spec.example_args, spec.example_kwargs, strict=False)
    pass_ = BlockSparseAttentionPass(8, 1.0)
    dense_out = program.module()(*spec.example_args, **spec.example_kwargs)
    sparse = pass_(program).program
    assert len(pass_.rewritten) == 2 and not pass_.skipped  # two layers
    got = sparse.module()(*spec.example_args, **spec.example_kwargs)
    want = dense_out[0] if isinstance(dense_out, tuple) else dense_out
    got = got[0] if isinstance(got, tuple) else got
    want = getattr(want, "last_hidden_state", getattr(want, "logits", want))
    got = getattr(got, "last_hidden_state", getattr(got, "logits", got))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # torch-sparse runs the same op on the kernel: equal to the reference for a sparse tau too
    sparse = BlockSparseAttentionPass(8, 0.5)(program).program
    art = get_backend("torch-sparse").lower(sparse, tmp_path, LowerOptions(threads=1))
    assert len(art.meta["block_sparse_attention"]) == 2
    runner = get_backend("torch-sparse").load(art, threads=1)
    inputs = [spec.example_kwargs[k] for k in ("input_ids", "attention_mask")]
    ref = sparse.module()(*spec.example_args, **spec.example_kwargs)
    ref = ref[0] if isinstance(ref, tuple) else getattr(ref, "last_hidden_state", getattr(ref, "logits", ref))
    torch.testing.assert_close(runner(inputs)[0], ref, rtol=1e-4, atol=1e-5)
