"""Engine layer names back to ONNX nodes and model layers."""

from __future__ import annotations

from sparsecc.backends.tensorrt.layer_map import LayerNameMap, is_myelin_region, nodes_in_layer_name

ORDER = ["node_Conv_1", "node_relu", "node_Conv_2", "node_add_3", "node_relu_4", "/enc/q/MatMul", "/enc/q/Add"]


def test_fused_names():
    assert nodes_in_layer_name("node_Conv_2 + node_add_3 + node_relu_4", ORDER) == [
        "node_Conv_2", "node_add_3", "node_relu_4"]


def test_pointwise_fusion():
    assert nodes_in_layer_name("PWN(PWN(node_add_3), node_relu_4)", ORDER) == ["node_add_3", "node_relu_4"]


def test_names_with_slashes_and_dots_survive():
    assert nodes_in_layer_name("/enc/q/MatMul + /enc/q/Add", ORDER) == ["/enc/q/MatMul", "/enc/q/Add"]


def test_foreign_node_covers_the_range_in_graph_order():
    name = "{ForeignNode[node_relu...node_relu_4]}"
    assert is_myelin_region(name)
    assert nodes_in_layer_name(name, ORDER) == ["node_relu", "node_Conv_2", "node_add_3", "node_relu_4"]


def test_unknown_names_map_to_nothing():
    assert nodes_in_layer_name("(Unnamed Layer* 12) [Shuffle]", ORDER) == []


def test_weights_through_provenance(resnet_expected):
    names = LayerNameMap.build(resnet_expected["node_order"], resnet_expected["provenance"])
    assert names.weights("node_Conv_134 + node_add_86 + node_relu_4") == ["layers.1.conv2.weight"]
    assert names.weight_to_layer["layers.1.conv2.weight"] == "layers.1.conv2"
    # Metadata, when given, wins over the name.
    assert names.weights("anything", ("node_Conv_136",)) == ["layers.2.conv1.weight"]
