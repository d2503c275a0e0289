"""Tiny Hugging Face models built from configs with random weights (no downloads).

They exercise the same `transformers` code paths (masking utilities, attention
dispatch, ModelOutput returns) as the real checkpoints, at a size that exports in
seconds.
"""

from __future__ import annotations

import torch

from ._common import SEQ_MAX, batch_dim, seeded, seq_dim, token_inputs
from .base import ModelSpec

__all__ = ["build_hf_bert_tiny", "build_hf_llama_tiny"]

INSTALL_HINT = "pip install 'sparsecc[models]'"


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"this model needs transformers: {INSTALL_HINT}") from e
    return transformers


# Attention: both "sdpa" (the transformers 5 default) and "eager" export here with a
# dynamic batch and sequence. Eager is used because it leaves attention as plain
# matmul/softmax ops that every backend lowers, where SDPA is one fused op that
# some lowerings would have to decompose first.
ATTN_IMPLEMENTATION = "eager"


def _token_spec(name, model, vocab, seed, description, task) -> ModelSpec:
    def make_inputs(batch: int, seq: int):
        ids, mask = token_inputs(batch, seq, vocab, seed + batch * 1000 + seq, pad_last=True)
        return (), {"input_ids": ids, "attention_mask": mask}

    _, kwargs = make_inputs(2, 16)
    batch, seq = batch_dim(), seq_dim()
    return ModelSpec(
        name=name,
        model=model,
        example_args=(),
        example_kwargs=kwargs,
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        description=description,
        make_inputs=make_inputs,
        task=task,
    )


def build_hf_bert_tiny(seed: int = 0) -> ModelSpec:
    """transformers BertModel: hidden 64, 2 layers, 4 heads, intermediate 128, vocab 512."""
    tf = _transformers()
    vocab = 512
    config = tf.BertConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=SEQ_MAX,
        attn_implementation=ATTN_IMPLEMENTATION,
    )
    with seeded(seed):
        model = tf.BertModel(config).eval()
    return _token_spec(
        "hf-bert-tiny", model, vocab, seed, "transformers BertModel, random init, hidden 64",
        "feature-extraction",
    )


def build_hf_llama_tiny(seed: int = 0) -> ModelSpec:
    """transformers LlamaForCausalLM: hidden 64, 2 layers, 4 heads / 2 kv heads, FFN 128."""
    tf = _transformers()
    vocab = 512
    config = tf.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=SEQ_MAX,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation=ATTN_IMPLEMENTATION,
    )
    with seeded(seed):
        model = tf.LlamaForCausalLM(config).eval()
    return _token_spec(
        "hf-llama-tiny", model, vocab, seed, "transformers LlamaForCausalLM, random init, GQA",
        "causal-lm",
    )
