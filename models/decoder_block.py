"""One Llama decoder block as a module of its own, and whole models rebuilt from a decoder checkpoint.

`DecoderBlock` wraps transformers' `LlamaDecoderLayer` with what the whole
model would give it (rotary tables, the causal mask), so one block can be
captured and run on hidden states without the rest of the model existing.
`load_decoder_checkpoint` builds the model a sparse checkpoint belongs to
(the zoo's SmolLM2, or a `LlamaForCausalLM` from the checkpoint's config) with
the checkpoint's weights, for `sparsecc eval` and `sparsecc compile`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from sparsecc.core.safetensors_io import CheckpointError, SafetensorsReader

from ._common import batch_dim, seq_dim, token_inputs
from .base import ModelSpec
from .decoder_checkpoint import DecoderShape

__all__ = ["DecoderBlock", "load_decoder_checkpoint", "sparse_checkpoint_info"]


class DecoderBlock(nn.Module):
    """``hidden [batch, seq, hidden] -> hidden``: one block at positions ``0..seq-1``, causal."""

    def __init__(self, shape: DecoderShape, weights: dict[str, torch.Tensor]):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        cfg = shape.hf_config()
        with torch.device("meta"):  # no memory until the checkpoint's tensors are assigned
            self.layer = LlamaDecoderLayer(cfg, layer_idx=0)
        self.layer.load_state_dict(weights, assign=True, strict=True)
        self.rotary = LlamaRotaryEmbedding(cfg)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        seq = hidden.shape[1]
        positions = torch.arange(seq, device=hidden.device)[None]
        cos, sin = self.rotary(hidden, positions)
        # Additive causal mask, as the eager attention of the whole model builds it.
        mask = torch.full((seq, seq), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        mask = mask.triu(1)[None, None]
        return self.layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=(cos, sin))

    @staticmethod
    def dynamic_shapes(max_positions: int):
        return ({0: batch_dim(), 1: seq_dim(max_positions)},)


def sparse_checkpoint_info(path: str | os.PathLike) -> dict | None:
    """The ``sparsecc`` metadata of a safetensors file, or None when it has none."""
    meta = SafetensorsReader(path).metadata.get("sparsecc")
    return json.loads(meta) if meta else None


def load_decoder_checkpoint(path: str | os.PathLike) -> ModelSpec:
    """The model a sparse decoder checkpoint (from `sparsecc prune-streamed`) belongs to, with its weights.

    SmolLM2 checkpoints load into the zoo's SmolLM2 (its tokenizer, so the
    perplexity task applies); others into a `LlamaForCausalLM` built from the
    config in the metadata, with random token inputs.
    """
    path = Path(path)
    info = sparse_checkpoint_info(path)
    if info is None:
        raise CheckpointError(f"{path}: no sparsecc metadata; only checkpoints written by `sparsecc prune-streamed` "
                              "load as a MODEL")
    reader = SafetensorsReader(path)
    shape = DecoderShape.from_dict(info["config"])
    if info.get("model") == "smollm2":
        from .pretrained import load_smollm2

        spec = load_smollm2()
    else:
        from transformers import LlamaForCausalLM

        with torch.device("meta"):
            model = LlamaForCausalLM(shape.hf_config())
        model.eval()

        def make_inputs(batch: int, seq: int):
            ids, _ = token_inputs(batch, seq, shape.vocab, 17 + batch * 1000 + seq)
            return (ids,), {}

        spec = ModelSpec(name=path.stem, model=model, example_args=make_inputs(2, 16)[0],
                         dynamic_shapes=({0: batch_dim(), 1: seq_dim(shape.max_positions)},),
                         description=f"Llama-shaped decoder from {path.name}", make_inputs=make_inputs,
                         task="causal-lm")
    state = {n: reader.read(n) for n in reader.names()}
    missing, unexpected = spec.model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (shape.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if shape.tie_embeddings:
        spec.model.tie_weights()
    rope = getattr(getattr(spec.model, "model", None), "rotary_emb", None)
    if rope is not None and rope.inv_freq.is_meta:  # non-persistent buffers: built, not loaded
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        spec.model.model.rotary_emb = LlamaRotaryEmbedding(shape.hf_config())
    spec.description += f" (weights: {path.name}, {info.get('pattern')} {info.get('criterion')})"
    return spec
