"""Block-by-block ONNX lowering of a streamed pruning: parity of the chained blocks with the whole model,
the pattern in every block file, the manifest, refusals, named errors and atomic output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsecc.core.safetensors_io import CheckpointError, SafetensorsReader, SafetensorsWriter
from sparsecc.errors import UsageError
from sparsecc.flows.streamed import StreamedOptions, prune_streamed
from sparsecc.flows.streamed_lowering import (TargetRefused, lower_streamed, lower_streamed_onnx, streamed_parity,
                                              verify_streamed_onnx)
from sparsecc.models.decoder_checkpoint import DecoderShape, write_random_checkpoint

pytest.importorskip("onnxruntime")

SHAPE = DecoderShape(hidden=64, ffn=128, heads=4, kv_heads=2, layers=2, vocab=256, max_positions=128)
OPTS = dict(samples=4, seq_len=16, micro_batch=4, calibration="random")


@pytest.fixture(scope="module")
def sparse(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lowering")
    dense = write_random_checkpoint(root / "dense" / "model.safetensors", SHAPE, seed=3)
    out = root / "sparse.safetensors"
    prune_streamed(dense, out, StreamedOptions(pattern="2:4", criterion="wanda", **OPTS))
    return out


@pytest.fixture(scope="module")
def bundle(sparse) -> Path:
    out = sparse.with_name("blocks")
    lower_streamed_onnx(sparse, out)
    return out


def test_chained_blocks_equal_the_whole_model_logits(bundle, sparse):
    for batch, seq in ((1, 32), (2, 7)):
        case = streamed_parity(bundle, sparse, batch=batch, seq=seq)
        out = case["outputs"][0]
        assert case["ok"], case
        assert out["rel_err"] < 1e-4 and out["scale"] > 0.1, out


# The bundle's own run_blocks.py, in a process where torch cannot be imported.
NO_TORCH = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # any import of torch fails
    import runpy
    sys.argv = ["run_blocks.py", sys.argv[1], "--ids", "5,17,99,3,250,0", "--save", sys.argv[2]]
    runpy.run_path(sys.argv[1] + "/run_blocks.py", run_name="__main__")
""")


def test_the_bundled_runner_needs_no_torch(bundle, sparse, tmp_path):
    from sparsecc.models.decoder_block import load_decoder_checkpoint

    npy = tmp_path / "logits.npy"
    p = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundle), str(npy)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["logits_shape"] == [1, 6, SHAPE.vocab]
    ids = torch.tensor([[5, 17, 99, 3, 250, 0]])
    with torch.no_grad():
        want = load_decoder_checkpoint(sparse).model(ids).logits.numpy()
    got = np.load(npy)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_the_pattern_holds_in_every_block_file(bundle, tmp_path):
    import onnx
    from onnx import numpy_helper

    results = verify_streamed_onnx(bundle)
    assert [r["file"] for r in results] == [f"blocks/block_{i:03d}.onnx" for i in range(SHAPE.layers)]
    assert all(r["ok"] and r["checked"] == 7 for r in results), results
    # Independently: every recorded initializer is 2:4 along its ONNX reduction axis.
    manifest = json.loads((bundle / "manifest.json").read_text())
    for b in manifest["blocks"]:
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(bundle / b["file"])).graph.initializer}
        assert len(b["provenance"]) == 7
        for fqn, prov in b["provenance"].items():
            w = np.moveaxis(inits[prov["initializer"]], prov["onnx_reduction_axis"], -1)
            assert ((w.reshape(-1, 4) != 0).sum(1) <= 2).all(), (b["file"], fqn)
    # A block file whose weight loses its pattern is caught.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    path = broken / "blocks" / "block_001.onnx"
    model = onnx.load(str(path))
    name = manifest["blocks"][1]["provenance"]["layer.mlp.down_proj.weight"]["initializer"]
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(t)), name))
    onnx.save(model, str(path))
    bad = verify_streamed_onnx(broken)
    assert bad[0]["ok"] and not bad[1]["ok"] and "down_proj" in bad[1]["failed"][0]


def test_the_manifest_names_every_file_and_shape(bundle, sparse):
    manifest = json.loads((bundle / "manifest.json").read_text())
    on_disk = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert manifest["files"] == on_disk
    assert manifest["embedding"]["file"] == "embedding.onnx" and manifest["head"]["file"] == "head.onnx"
    assert manifest["seq_len"] == {"min": 2, "max": SHAPE.max_positions} and manifest["batch"]["min"] == 1
    assert manifest["pattern"] == "2:4" and manifest["config"]["layers"] == SHAPE.layers
    meta = json.loads(SafetensorsReader(sparse).metadata["sparsecc"])["tensors"]
    for b in manifest["blocks"]:
        assert b["inputs"][0]["shape"] == ["batch", "seq", SHAPE.hidden]
        assert b["outputs"][0]["shape"] == ["batch", "seq", SHAPE.hidden]
        assert b["sparsity"]["fraction"] == pytest.approx(0.5)
        assert len(b["sparsity"]["by_tensor"]) == 7
        assert b["sparsity"]["zeros"] == sum(meta[f"model.layers.{b['index']}.{k}"]["numel"] // 2
                                             for k in b["sparsity"]["by_tensor"])
    assert manifest["head"]["outputs"][0]["shape"] == ["batch", "seq", SHAPE.vocab]


def test_cli_prunes_then_lowers_unstructured(tmp_path):
    from typer.testing import CliRunner

    from sparsecc.cli import app

    dense = write_random_checkpoint(tmp_path / "dense" / "model.safetensors", SHAPE, seed=5)
    out, blocks = tmp_path / "u.safetensors", tmp_path / "ublocks"
    args = ["prune-streamed", str(dense), "-o", str(out), "-p", "unstructured", "-s", "0.7", "-c", "magnitude",
            "--calibration", "random", "--samples", "4", "--seq-len", "16", "--lower-onnx", str(blocks)]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert all(r["ok"] for r in verify_streamed_onnx(blocks))
    manifest = json.loads((blocks / "manifest.json").read_text())
    assert all(min(b["sparsity"]["by_tensor"].values()) >= 0.7 - 1e-3 for b in manifest["blocks"])
    assert streamed_parity(blocks, out, seq=16)["ok"]
    # An existing DIR is refused before any pruning; --force replaces it.
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "exists" in res.output


def test_executorch_and_tensorrt_are_refused_with_the_reason(sparse, tmp_path):
    from typer.testing import CliRunner

    from sparsecc.cli import app

    with pytest.raises(TargetRefused, match="ExecuTorch per block is not built"):
        lower_streamed(sparse, tmp_path / "et", target="executorch")
    with pytest.raises(TargetRefused, match="TensorRT is not available here"):
        lower_streamed(sparse, tmp_path / "trt", target="tensorrt")
    res = CliRunner().invoke(app, ["prune-streamed", str(sparse), "-o", str(tmp_path / "x.safetensors"),
                                   "--lower-executorch", str(tmp_path / "et")], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "ExecuTorch per block is not built" in " ".join(res.output.split())
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_without_metadata_or_of_the_wrong_shape_are_named(sparse, tmp_path):
    dense = write_random_checkpoint(tmp_path / "dense" / "model.safetensors", SHAPE)
    with pytest.raises(CheckpointError, match="no sparsecc metadata"):
        lower_streamed_onnx(dense, tmp_path / "a")
    with pytest.raises(CheckpointError, match="reads the sparse .safetensors checkpoint"):
        lower_streamed_onnx(tmp_path / "nowhere.safetensors", tmp_path / "a")
    # Metadata whose config says 3 layers over a 2-layer file.
    reader = SafetensorsReader(sparse)
    info = json.loads(reader.metadata["sparsecc"])
    info["config"]["layers"] = 3
    wrong = tmp_path / "wrong.safetensors"
    names = reader.names()
    with SafetensorsWriter(wrong, [(n, reader.dtype(n), reader.shape(n)) for n in names]) as w:
        for n in names:
            w.write(n, reader.read(n))
        w.finish({"format": "pt", "sparsecc": json.dumps(info)})
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.2.input_layernorm.weight' is missing"):
        lower_streamed_onnx(wrong, tmp_path / "a")
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.partial*"))


def test_a_failure_leaves_no_half_written_folder(sparse, bundle, tmp_path, monkeypatch):
    from sparsecc.backends.onnx.backend import OnnxBackend

    real, calls = OnnxBackend.lower, []

    def fail_second(self, program, out_dir, options=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed in block 1")
        return real(self, program, out_dir, options)

    monkeypatch.setattr(OnnxBackend, "lower", fail_second)
    with pytest.raises(RuntimeError, match="killed in block 1"):
        lower_streamed_onnx(sparse, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    # An existing folder is kept whole when the replacement fails, and refused without force.
    with pytest.raises(UsageError, match="exists; pass --force"):
        lower_streamed_onnx(sparse, bundle)
    calls.clear()
    before = sorted(p.name for p in bundle.rglob("*"))
    with pytest.raises(RuntimeError, match="killed in block 1"):
        lower_streamed_onnx(sparse, bundle, force=True)
    assert sorted(p.name for p in bundle.rglob("*")) == before
    assert not list(bundle.parent.glob(f".{bundle.name}.*"))
