"""The edge bundle for a real model: MiniLM (all-MiniLM-L6-v2), 2:4 by recipes/2of4.yaml."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import onnx
import pytest

from sparsecc.backends.onnx.verify_nm import check_nm

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_minilm_tensorrt_bundle(zoo, tmp_path):
    from sparsecc.flows.compile import compile

    spec, program = zoo("minilm")
    out = tmp_path / "minilm"
    result = compile(spec, ROOT / "recipes" / "2of4.yaml", out, targets=["tensorrt-bundle"], program=program,
                     dense_reference=False)
    target = result.manifest["targets"]["tensorrt-bundle"]
    assert target["parity"]["ok"], target["parity"]
    layers = target["pattern_verification"]["layers"]
    assert len(layers) >= 36 and all(p["ok"] and p["eligible"] for p in layers)
    folder = out / "tensorrt-bundle"
    expected = json.loads((folder / "expected_sparse_layers.json").read_text())
    eligible = {e["onnx_node"] for e in expected["layers"] if e["onnx_2_4"]}
    assert len(eligible) >= 36  # 6 blocks x (q, k, v, out, ffn in, ffn out), plus the pooler
    verified = {e.node for e in check_nm(onnx.load(str(folder / "model.fp16.onnx"))) if e.eligible}
    assert eligible <= verified
    subprocess.run(["bash", "-n", str(folder / "build.sh")], check=True)
    profile = json.loads((folder / "versions.json").read_text())["profile"]
    assert profile["input_ids"]["max"] == [64, 512] and profile["input_ids"]["min"][0] == 1
