"""Per-layer report: 2:4 in the ONNX -> eligible in TensorRT -> sparse kernel picked, with reasons."""

from __future__ import annotations

import pytest

from sparsecc.backends.tensorrt.build_log import parse_build_log
from sparsecc.backends.tensorrt.inspector import load_engine_info
from sparsecc.backends.tensorrt.layer_map import LayerNameMap
from sparsecc.backends.tensorrt.report import (
    STATUS_DENSE,
    STATUS_NOT_2_4,
    STATUS_NOT_ELIGIBLE,
    STATUS_SPARSE,
    STATUS_UNKNOWN,
    layer_report,
    report_markdown,
    report_summary,
)


@pytest.fixture
def names(resnet_expected):
    return LayerNameMap.build(resnet_expected["node_order"], resnet_expected["provenance"])


def _by_layer(rows):
    return {r.layer: r for r in rows}


@pytest.mark.parametrize("major", [10, 11])
def test_log_and_inspector(fixtures, resnet_expected, names, major):
    log = parse_build_log((fixtures / f"trt{major}_resnet_sparse.build.log").read_text())
    info = load_engine_info(fixtures / f"trt{major}_resnet_sparse.layers.json")
    rows = _by_layer(layer_report(resnet_expected["layers"], names, log, info))
    assert rows["layers.2.conv1"].status == STATUS_SPARSE
    assert rows["layers.2.conv1"].trt_layer == "node_Conv_136 + node_relu_5"
    assert "sparse_conv" in rows["layers.2.conv1"].tactic
    for layer, cin in (("layers.1.conv1", 16), ("layers.1.conv2", 32), ("layers.2.conv2", 32)):
        assert rows[layer].status == STATUS_DENSE and rows[layer].eligible and not rows[layer].picked
        assert rows[layer].reason.startswith(f"TensorRT timed dense faster for this layer: C_in={cin}")
    assert rows["conv1"].status == STATUS_NOT_2_4 and rows["conv1"].reason == "K=3 not a multiple of 4"
    assert rows["fc"].reason == "dense weight: not pruned"
    assert report_summary(list(rows.values())) == {
        "layers": 9, "onnx_2_4": 4, "eligible": 4, "sparse": 1, "dense_timed_faster": 3, "not_eligible": 0,
        "not_2_4": 5, "unknown": 0}


def test_log_only(fixtures, resnet_expected, names):
    log = parse_build_log((fixtures / "trt10_resnet_sparse.build.log").read_text())
    rows = _by_layer(layer_report(resnet_expected["layers"], names, log, None))
    assert rows["layers.2.conv1"].status == STATUS_SPARSE and rows["layers.2.conv1"].tactic == ""
    assert rows["layers.1.conv1"].status == STATUS_DENSE
    assert rows["layers.1.conv1"].reason == "TensorRT timed dense faster for this layer: C_in=16, C_out=32 " \
                                            "(below 256 channels the dense kernel usually wins)"


def test_inspector_only_uses_the_tactic_name(fixtures, resnet_expected, names):
    info = load_engine_info(fixtures / "trt11_resnet_sparse.layers.json")
    rows = _by_layer(layer_report(resnet_expected["layers"], names, None, info))
    assert rows["layers.2.conv1"].status == STATUS_SPARSE
    assert rows["layers.1.conv1"].status == STATUS_NOT_ELIGIBLE and rows["layers.1.conv1"].eligible is None


def test_myelin_and_fp32_reasons(fixtures, resnet_expected, names):
    log = parse_build_log("[I] [TRT] (Sparsity) Layers eligible for sparse math: \n"
                          "[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: \n")
    info = load_engine_info(fixtures / "trt10_resnet_myelin.layers.json")
    rows = _by_layer(layer_report(resnet_expected["layers"], names, log, info))
    assert rows["layers.1.conv1"].status == STATUS_NOT_ELIGIBLE
    assert rows["layers.1.conv1"].reason.startswith("runs in FP32")
    for layer in ("layers.1.conv2", "layers.2.conv1", "layers.2.conv2"):
        assert "Myelin region ({ForeignNode[node_Conv_134...node_relu_6]})" in rows[layer].reason


def test_no_evidence_is_unknown_not_dense(resnet_expected, names):
    rows = _by_layer(layer_report(resnet_expected["layers"], names, None, None))
    assert rows["layers.2.conv1"].status == STATUS_UNKNOWN and rows["layers.2.conv1"].picked is None


def test_markdown(fixtures, resnet_expected, names):
    log = parse_build_log((fixtures / "trt10_resnet_sparse.build.log").read_text())
    text = report_markdown(layer_report(resnet_expected["layers"], names, log, None))
    assert "1 of 9 layers run a 2:4 sparse kernel; 4 are 2:4 in the ONNX, 4 eligible in TensorRT, 3 timed dense faster." in text
    assert "| layers.2.conv1 | node_Conv_136 | yes | yes | yes | 2:4 sparse kernel picked |" in text
