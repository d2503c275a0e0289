"""SmolLM2's GGUF file read tensor by tensor gives transformers' weights, bit for bit."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def test_gguf_tensors_equal_what_transformers_loads():
    from sparsecc.models import get_model
    from sparsecc.models.decoder_checkpoint import open_decoder_checkpoint, smollm2_gguf_path

    spec = get_model("smollm2")
    ckpt = open_decoder_checkpoint(smollm2_gguf_path())
    assert (ckpt.shape.layers, ckpt.shape.hidden, ckpt.shape.kv_heads, ckpt.shape.tie_embeddings) == (30, 576, 3, True)
    state = spec.model.state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.7.self_attn.k_proj.weight",
                 "model.layers.29.mlp.down_proj.weight", "model.norm.weight"):
        assert torch.equal(ckpt.read(name), state[name]), name
    rows = torch.tensor([49151, 3, 4097, 3])
    assert torch.equal(ckpt.read_rows("model.embed_tokens.weight", rows), state["model.embed_tokens.weight"][rows])
    table = b"".join(bytes(c) for c in ckpt.chunks("model.embed_tokens.weight"))
    assert table == state["model.embed_tokens.weight"].numpy().tobytes()
