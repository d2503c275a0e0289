"""A small BERT-style encoder: post-norm layers, separate q/k/v/o, padding mask."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import SEQ_MAX, batch_dim, seeded, seq_dim, token_inputs
from .base import ModelSpec

__all__ = ["BertEncoder", "build_bert"]


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim) + mask_bias
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.output(out.transpose(1, 2).reshape(b, s, h))


class EncoderLayer(nn.Module):
    """Post-norm: x = ln(x + attn(x)); x = ln(x + ffn(x))."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attention(x, mask_bias))
        return self.ffn_norm(x + self.ffn_out(self.act(self.intermediate(x))))


class BertEncoder(nn.Module):
    def __init__(
        self,
        vocab_size: int = 512,
        hidden: int = 64,
        layers: int = 2,
        heads: int = 4,
        ffn: int = 128,
        max_positions: int = SEQ_MAX,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        # Positions come from the input's own length so the sequence axis stays dynamic.
        positions = torch.arange(seq, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = self.embed_norm(x)
        # [B, S] (1 = attend) -> additive bias [B, 1, 1, S]; a finite large negative keeps
        # softmax free of NaNs and exports cleanly to every backend.
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e9
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


def build_bert(seed: int = 0) -> ModelSpec:
    """BERT-style encoder: vocab 512, hidden 64, 2 layers, 4 heads, FFN 128; returns [B, S, 64]."""
    vocab = 512
    with seeded(seed):
        model = BertEncoder(vocab_size=vocab).eval()

    def make_inputs(batch: int, seq: int):
        ids, mask = token_inputs(batch, seq, vocab, seed + batch * 1000 + seq, pad_last=True)
        return (ids, mask), {}

    args, _ = make_inputs(2, 16)
    batch, seq = batch_dim(), seq_dim()
    return ModelSpec(
        name="bert",
        model=model,
        example_args=args,
        dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
        description="BERT-style encoder: learned positions, 2 post-norm layers, padding mask",
        make_inputs=make_inputs,
        task="feature-extraction",
    )
