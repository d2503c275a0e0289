"""One captured decoder block: the same function as the whole model's block, pruned in place and rebound."""

from __future__ import annotations

import pytest
import torch

from sparsecc.core.capture import capture
from sparsecc.core.ir import SparsityPattern
from sparsecc.models.decoder_block import DecoderBlock
from sparsecc.models.decoder_checkpoint import BLOCK_TENSORS, DecoderShape
from sparsecc.plan.block_pruning import BlockPruning, mask_crc32, run_block, set_block_weights
from sparsecc.plan.calibration_data import CalibrationError

SHAPE = DecoderShape(hidden=64, ffn=128, heads=4, kv_heads=2, layers=2, vocab=128, max_positions=64)


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(SHAPE.hf_config()).eval()


def _block_weights(model, i):
    return {t: model.state_dict()[f"model.layers.{i}.{t}"].clone() for t in BLOCK_TENSORS}


def test_block_matches_the_whole_models_block_and_rebinds(model):
    ids = torch.randint(0, SHAPE.vocab, (2, 12))
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    program = capture(DecoderBlock(SHAPE, _block_weights(model, 0)), (hs[0],), {}, DecoderBlock.dynamic_shapes(64))
    out = run_block(program, [hs[0].clone()])[0]
    torch.testing.assert_close(out, hs[1], rtol=0, atol=1e-5)
    set_block_weights(program, _block_weights(model, 1), "layer.")
    # The last hidden state has the final norm applied: compare block 1 on its input with the model's norm.
    out1 = run_block(program, [hs[1].clone()])[0]
    torch.testing.assert_close(model.model.norm(out1), hs[2], rtol=0, atol=1e-5)
    with pytest.raises(CalibrationError, match=r"weight 'layer.mlp.up_proj.weight' is \[3, 3\]"):
        set_block_weights(program, {"mlp.up_proj.weight": torch.zeros(3, 3)}, "layer.")


def test_block_pruning_keeps_the_pattern_and_fingerprints_masks(model):
    x = torch.randn(4, 16, SHAPE.hidden)
    program = capture(DecoderBlock(SHAPE, _block_weights(model, 0)), (x,), {}, DecoderBlock.dynamic_shapes(64))
    result = BlockPruning(SparsityPattern.parse("2:4"), 0.5, "wanda", prefix="layer.").prune(program, [x[:2], x[2:]])
    assert set(result.new) == {t for t in BLOCK_TENSORS if t.endswith("proj.weight")}
    for name, w in result.new.items():
        assert int((w != 0).reshape(-1, 4).sum(1).max()) <= 2
        assert result.masks[name]["mask_crc32"] == mask_crc32(w != 0)  # wanda keeps every surviving weight
        assert result.masks[name]["nonzero"] == w.numel() // 2
    assert [o.shape for o in result.outputs] == [(2, 16, SHAPE.hidden)] * 2


def test_shape_errors_are_named():
    from sparsecc.core.safetensors_io import CheckpointError

    with pytest.raises(CheckpointError, match="hidden 64, heads 5"):
        DecoderShape(hidden=64, ffn=128, heads=5, kv_heads=1, layers=1, vocab=8)
    with pytest.raises(CheckpointError, match="layers must be a positive integer"):
        DecoderShape(hidden=64, ffn=128, heads=4, kv_heads=2, layers=0, vocab=8)
    with pytest.raises(CheckpointError, match="cfg.json: not a Llama-shaped config, missing intermediate_size"):
        DecoderShape.from_hf_config({"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
                                     "vocab_size": 4}, "cfg.json")
