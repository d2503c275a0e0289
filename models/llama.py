"""A small LLaMA-style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import SEQ_MAX, batch_dim, seeded, seq_dim, token_inputs
from .base import ModelSpec

__all__ = ["Llama", "build_llama"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, causal: torch.Tensor
    ) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # Grouped-query attention: each k/v head serves heads // kv_heads query heads.
        groups = self.heads // self.kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(causal, float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, ffn: int) -> None:
        super().__init__()
        self.input_norm = RMSNorm(hidden)
        self.self_attn = Attention(hidden, heads, kv_heads)
        self.post_attn_norm = RMSNorm(hidden)
        self.mlp = MLP(hidden, ffn)

    def forward(self, x, cos, sin, causal):
        x = x + self.self_attn(self.input_norm(x), cos, sin, causal)
        return x + self.mlp(self.post_attn_norm(x))


class Llama(nn.Module):
    def __init__(
        self,
        vocab_size: int = 512,
        hidden: int = 64,
        layers: int = 2,
        heads: int = 4,
        kv_heads: int = 2,
        ffn: int = 128,
        max_positions: int = SEQ_MAX,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden)
        self.layers = nn.ModuleList(DecoderLayer(hidden, heads, kv_heads, ffn) for _ in range(layers))
        self.norm = RMSNorm(hidden)
        # Untied: lm_head is its own prunable weight, as in most LLaMA checkpoints.
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)
        head_dim = hidden // heads
        inv_freq = 1.0 / rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        # Tables for every position up to max_positions, sliced to the input's length
        # in forward, so the sequence axis stays dynamic under torch.export.
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(1)
        for layer in self.layers:
            x = layer(x, cos, sin, causal)
        return self.lm_head(self.norm(x))


def build_llama(seed: int = 0) -> ModelSpec:
    """LLaMA-style decoder: vocab 512, hidden 64, 2 layers, 4 heads / 2 kv heads, FFN 128."""
    vocab = 512
    with seeded(seed):
        model = Llama(vocab_size=vocab).eval()

    def make_inputs(batch: int, seq: int):
        ids, _ = token_inputs(batch, seq, vocab, seed + batch * 1000 + seq)
        return (ids,), {}

    args, _ = make_inputs(2, 16)
    return ModelSpec(
        name="llama",
        model=model,
        example_args=args,
        dynamic_shapes=({0: batch_dim(), 1: seq_dim()},),
        description="LLaMA-style decoder: RMSNorm, RoPE, GQA (4 q / 2 kv heads), SwiGLU",
        make_inputs=make_inputs,
        task="causal-lm",
    )
