"""Engines built with TensorRT's Python API: run only where TensorRT and a CUDA GPU are present."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sparsecc.backends import MissingDependencyError, get_backend
from sparsecc.backends.tensorrt.version import needs_fp16_graph, tensorrt_major

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
ROOT = Path(__file__).resolve().parents[3]


def test_version_rules():
    assert tensorrt_major("10.3.0") == 10 and tensorrt_major("11.4.0.7") == 11
    assert not needs_fp16_graph(10) and needs_fp16_graph(11)
    with pytest.raises(RuntimeError, match="TensorRT 8.6.1 is not supported"):
        tensorrt_major("8.6.1")


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown when TensorRT is missing")
def test_missing_tensorrt_is_one_clear_line(zoo, tmp_path):
    _, program = zoo("resnet")
    with pytest.raises(MissingDependencyError, match=r"pip install 'sparsecc\[tensorrt\]'"):
        get_backend("tensorrt").lower(program, tmp_path)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()),
                    reason="needs the tensorrt Python package (TensorRT 10 or 11) and a CUDA GPU (Ampere+ for 2:4)")
def test_engines_report_and_parity(zoo, tmp_path):
    from sparsecc.flows.compile import compile

    spec, program = zoo("resnet")
    result = compile(spec, ROOT / "recipes" / "2of4.yaml", tmp_path / "b", targets=["tensorrt"], program=program,
                     dense_reference=False)
    target = result.manifest["targets"]["tensorrt"]
    assert target["parity"]["ok"] and target["pattern_verification"]["ok"]
    folder = tmp_path / "b" / "tensorrt"
    for name in ("sparse.plan", "dense.plan", "sparse.build.log", "sparse.layers.json", "timing.cache", "report.md"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    summary = report["sparse"]["summary"]
    assert summary["onnx_2_4"] == 4 and summary["unknown"] == 0
    assert "(Sparsity) Layers eligible for sparse math:" in (folder / "sparse.build.log").read_text()
    # The dense engine was built without SPARSE_WEIGHTS: nothing can be picked sparse there.
    assert report["dense"]["summary"]["sparse"] == 0
