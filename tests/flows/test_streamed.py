"""Streamed layer-wise pruning: equal to the in-memory path, valid patterns, a memory limit, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.export import Dim

from sparsecc.core.capture import capture
from sparsecc.core.ir import SparsityPattern
from sparsecc.core.safetensors_io import CheckpointError, SafetensorsReader
from sparsecc.errors import UsageError
from sparsecc.flows.sparsify import sparsify
from sparsecc.flows.streamed import StreamedOptions, memory_budget_mb, prune_streamed
from sparsecc.models.decoder_checkpoint import DecoderShape, write_random_checkpoint
from sparsecc.plan.calibration_data import CalibrationData
from sparsecc.plan.masks import pattern_violation

SHAPE = DecoderShape(hidden=64, ffn=128, heads=4, kv_heads=2, layers=2, vocab=256, max_positions=128)
OPTS = dict(samples=8, seq_len=32, micro_batch=4, calibration="random")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny") / "model.safetensors", SHAPE, seed=1)


def _hf_model(path: Path):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(SHAPE.hf_config()).eval()
    r = SafetensorsReader(path)
    model.load_state_dict({n: r.read(n) for n in r.names()})
    return model


def test_streamed_sparsegpt_equals_the_in_memory_path(tiny, tmp_path):
    out = tmp_path / "out.safetensors"
    result = prune_streamed(tiny, out, StreamedOptions(pattern="2:4", criterion="sparsegpt", **OPTS))
    # The same tokens through the whole captured model, sparsify's sequential SparseGPT.
    tokens = torch.randint(0, SHAPE.vocab, (8, 32), generator=torch.Generator().manual_seed(0))
    model = _hf_model(tiny)
    program = capture(model, (tokens[:2],), {}, ({0: Dim("batch", min=1, max=64), 1: Dim("seq", min=2, max=128)},))
    data = CalibrationData([((tokens[i:i + 1],), {}) for i in range(8)])
    recipe = {"pattern": "2:4", "criterion": "sparsegpt", "layers": {"min_params": 0, "exclude": ["lm_head"]},
              "calibration": {"sequential": True}}
    memory = sparsify(program, recipe, fold=True, calibration=data).program.state_dict
    streamed = SafetensorsReader(out)
    pruned = [n for n in streamed.names() if n.endswith("proj.weight")]
    assert len(pruned) == 14 and set(result.masks) == set(pruned)
    for n in streamed.names():
        # Bit for bit: one engine (sequential_solve), the same batches, the same order of sums.
        assert torch.equal(streamed.read(n), memory[n].detach()), n
    meta = json.loads(streamed.metadata["sparsecc"])
    assert meta["pattern"] == "2:4" and meta["criterion"] == "sparsegpt" and meta["config"]["layers"] == 2
    assert meta["tensors"]["model.layers.1.mlp.down_proj.weight"]["nonzero"] == 64 * 128 // 2


@pytest.mark.parametrize("pattern,criterion,sparsity", [("4:8", "wanda", 0.5), ("unstructured", "magnitude", 0.7)])
def test_patterns_hold_and_the_checkpoint_loads_as_a_model(tiny, tmp_path, pattern, criterion, sparsity):
    from sparsecc.models.resolve import resolve_model

    out = tmp_path / "out.safetensors"
    prune_streamed(tiny, out, StreamedOptions(pattern=pattern, criterion=criterion, sparsity=sparsity, **OPTS))
    spec = resolve_model(str(out))
    p = SparsityPattern.parse(pattern)
    weights = dict(spec.model.named_parameters())
    for n in SafetensorsReader(out).names():
        if n.endswith("proj.weight"):
            assert pattern_violation(weights[n].detach(), p, sparsity, 0, 1) is None, n
    ids = torch.randint(0, SHAPE.vocab, (1, 16))
    assert spec.model(ids).logits.shape == (1, 16, SHAPE.vocab)
    if pattern == "4:8":  # what compile runs: magnitude at the same pattern keeps exactly the checkpoint's zeros
        program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
        recipe = {"pattern": pattern, "criterion": "magnitude", "layers": {"min_params": 0, "include": ["re:.*layers.*"]}}
        lowered = sparsify(program, recipe, fold=True).program.state_dict
        for n in SafetensorsReader(out).names():
            assert torch.equal(lowered[n], weights[n].detach()), n


def test_a_failed_block_leaves_no_output(tiny, tmp_path, monkeypatch):
    import sparsecc.plan.block_pruning as bp

    calls = []
    real = bp.run_block

    def fail_second(program, batches):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed in block 1")
        return real(program, batches)

    monkeypatch.setattr(bp, "run_block", fail_second)
    with pytest.raises(RuntimeError, match="killed in block 1"):
        prune_streamed(tiny, tmp_path / "out.safetensors", StreamedOptions(**OPTS))
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoints_configs_and_options_are_named(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: nowhere.safetensors"):
        prune_streamed("nowhere.safetensors", tmp_path / "o.safetensors", StreamedOptions(**OPTS))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**SHAPE.hf_config().to_dict(), "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.2.input_layernorm.weight' is missing"):
        prune_streamed(tiny, tmp_path / "o.safetensors", StreamedOptions(**OPTS), config=wrong)
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({**SHAPE.hf_config().to_dict(), "intermediate_size": 96}))
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \[128, 64\], the "
                                              r"config implies \[96, 64\]"):
        prune_streamed(tiny, tmp_path / "o.safetensors", StreamedOptions(**OPTS), config=wide)
    with pytest.raises(UsageError, match="unknown criterion 'obs'"):
        prune_streamed(tiny, tmp_path / "o.safetensors", StreamedOptions(criterion="obs", **OPTS))
    with pytest.raises(UsageError, match="needs gradients of the whole model"):
        prune_streamed(tiny, tmp_path / "o.safetensors", StreamedOptions(criterion="taylor", **OPTS))
    with pytest.raises(UsageError, match="needs a tokenizer"):
        prune_streamed(tiny, tmp_path / "o.safetensors", StreamedOptions(**{**OPTS, "calibration": "lee"}))
    (tmp_path / "exists.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="exists; pass --force"):
        prune_streamed(tiny, tmp_path / "exists.safetensors", StreamedOptions(**OPTS))
    assert not list(tmp_path.glob(".*partial*"))


# A child process prunes a checkpoint larger than the memory it may allocate (RLIMIT_DATA: heap and
# private mappings, which is where torch's tensors live). Imports and torch.export's first use are
# warmed up on a one-block model of the same width before the limit is set; the negative control then loads the checkpoint
# whole under the same limit and must fail.
CHILD = textwrap.dedent("""
    import json, resource, sys
    import torch
    from sparsecc.core.safetensors_io import SafetensorsReader
    from sparsecc.flows.streamed import StreamedOptions, prune_streamed, return_freed_memory

    def vm(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    big, warm, out, limit_mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    opts = StreamedOptions(pattern="2:4", criterion="sparsegpt", samples=8, seq_len=64, calibration="random")
    return_freed_memory()
    prune_streamed(warm, out, opts, force=True)
    limit = vm("VmData") + limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))
    prune_streamed(big, out, opts, force=True)
    try:
        reader = SafetensorsReader(big)
        whole = [reader.read(n) for n in reader.names()]
        whole_fits = True
    except (MemoryError, RuntimeError):
        whole_fits = False
    print(json.dumps({"whole_fits": whole_fits}))
""")


def test_a_checkpoint_larger_than_the_memory_limit_is_pruned(tmp_path):
    shape = DecoderShape(hidden=256, ffn=384, heads=8, kv_heads=4, layers=14, vocab=512, max_positions=128)
    big = write_random_checkpoint(tmp_path / "big" / "model.safetensors", shape)
    warm = write_random_checkpoint(tmp_path / "warm" / "model.safetensors",
                                   DecoderShape(hidden=256, ffn=384, heads=8, kv_heads=4, layers=1, vocab=64))
    limit_mb = 22  # 20 MB was enough here: one block's budget is 10.6 MB, the rest the block's graph and runner
    assert big.stat().st_size > 1.2 * limit_mb * 2**20
    assert memory_budget_mb(shape, 8, 64)["total"] < limit_mb
    out = tmp_path / "out.safetensors"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", CHILD, str(big), str(warm), str(out), str(limit_mb)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"whole_fits": False}
    reader = SafetensorsReader(out)
    assert len(json.loads(reader.metadata["sparsecc"])["tensors"]) == 7 * shape.layers
    nz = reader.read("model.layers.13.mlp.down_proj.weight") != 0
    assert int(nz.reshape(-1, 4).sum(1).max()) <= 2
