"""The engine inspector's layer JSON in the TensorRT 10 and 11 schemas."""

from __future__ import annotations

import json

import pytest

from sparsecc.backends.tensorrt.inspector import (
    InspectorFormatError,
    load_engine_info,
    onnx_nodes_in_metadata,
    parse_engine_info,
)


@pytest.mark.parametrize("major,schema,io_key", [(10, "tensorrt10", "Bindings"), (11, "tensorrt11", "I/O Tensors")])
def test_both_schemas(fixtures, major, schema, io_key):
    info = load_engine_info(fixtures / f"trt{major}_resnet_sparse.layers.json")
    assert info.schema == schema
    assert info.io_tensors == ["x", "linear"]
    assert len(info.layers) == 12
    sparse = [layer.name for layer in info.layers if layer.sparse_tactic]
    assert sparse == ["node_Conv_136 + node_relu_5"]
    conv = next(layer for layer in info.layers if layer.name.startswith("node_Conv_134"))
    assert conv.onnx_nodes == ("node_Conv_134", "node_add_86", "node_relu_4")
    assert conv.input_types and all(("FP16" in t or t == "Half") for t in conv.input_types)


def test_metadata_separators():
    meta = "[ONNX Layer: /enc/q/MatMul]\x1f[ONNX Layer: /enc/q/Add]\x1e[ONNX Layer: /enc/q/MatMul]"
    assert onnx_nodes_in_metadata(meta) == ("/enc/q/MatMul", "/enc/q/Add")
    assert onnx_nodes_in_metadata("") == ()


def test_profiles_are_filtered():
    data = {"Layers": [{"Name": "conv", "LayerType": "CaskConvolution", "TacticName": "a"},
                       {"Name": "conv [profile 1]", "LayerType": "CaskConvolution", "TacticName": "b_sparse"}],
            "Bindings": ["x", "x [profile 1]"]}
    assert [(layer.name, layer.tactic) for layer in parse_engine_info(data).layers] == [("conv", "a")]
    assert [(layer.name, layer.tactic) for layer in parse_engine_info(data, profile=1).layers] == [("conv", "b_sparse")]


def test_signal_and_wait_layers_are_dropped():
    data = {"Layers": [{"Name": "s", "LayerType": "signal"}, {"Name": "c", "LayerType": "CaskGemm"}]}
    assert [layer.name for layer in parse_engine_info(data).layers] == ["c"]


def test_names_only_verbosity_is_explained():
    with pytest.raises(InspectorFormatError, match="ProfilingVerbosity.DETAILED"):
        parse_engine_info({"Layers": ["conv", "relu"], "Bindings": []})


def test_not_json_names_the_file(tmp_path):
    bad = tmp_path / "layers.json"
    bad.write_text("{not json")
    with pytest.raises(InspectorFormatError, match="layers.json"):
        load_engine_info(bad)


def test_no_layers_key():
    with pytest.raises(InspectorFormatError, match="'Layers'"):
        parse_engine_info(json.dumps({"Bindings": []}))
