"""Provenance on hand-built graphs: value matching, ties broken by module scope, scaled weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsecc.core.analyze import PrunableWeight  # noqa: E402
from sparsecc.backends.onnx.provenance import find_provenance, layout_of  # noqa: E402


def weight(fqn: str, shape: tuple[int, ...], role: str = "linear", groups: int = 1) -> PrunableWeight:
    return PrunableWeight(
        fqn=fqn, node=fqn.replace(".", "_"), layer=fqn.rsplit(".", 1)[0], role=role, op="", shape=shape,
        reduction_axis=1, output_axis=0, groups=groups, flops=0, consumers=(),
    )


def scoped(node: onnx.NodeProto, module: str) -> onnx.NodeProto:
    prop = node.metadata_props.add()
    prop.key, prop.value = "pkg.torch.onnx.name_scopes", repr(["", module, "linear"])
    return node


def test_equal_weights_are_told_apart_by_module_scope():
    w = np.arange(32, dtype=np.float32).reshape(8, 4)
    nodes = [
        scoped(helper.make_node("MatMul", ["x", "val_1"], ["h"], name="mm_b"), "b"),
        scoped(helper.make_node("MatMul", ["x", "val_2"], ["y"], name="mm_a"), "a"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        initializer=[numpy_helper.from_array(w.T.copy(), "val_1"), numpy_helper.from_array(w.T.copy(), "val_2")],
    )
    model = helper.make_model(graph)
    weights = [weight("a.weight", (8, 4)), weight("b.weight", (8, 4)), weight("c.weight", (8, 4))]
    tensors = {"a.weight": torch.from_numpy(w), "b.weight": torch.from_numpy(w), "c.weight": torch.ones(8, 4)}
    prov = find_provenance(model, weights, tensors)
    assert prov["a.weight"]["initializer"] == "val_2"
    assert prov["b.weight"]["initializer"] == "val_1"
    assert prov["a.weight"]["layout"] == "transposed [in, out]"
    assert prov["a.weight"]["consumers"] == [{"node": "mm_a", "op": "MatMul", "input": 1, "via": []}]
    assert prov["c.weight"]["initializer"] is None and "no initializer" in prov["c.weight"]["reason"]


def test_scaled_conv_weight_and_consumer_through_cast():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    w[:, ::2] = 0
    scale = rng.uniform(0.5, 2.0, size=(4, 1, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["c.weight"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w32"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
        initializer=[numpy_helper.from_array(w * scale, "c.weight")],
    )
    (prov,) = find_provenance(helper.make_model(graph), [weight("c.weight", w.shape, "conv")],
                              {"c.weight": torch.from_numpy(w)}).values()
    assert prov["values"].startswith("scaled per output channel")
    assert prov["layout"] == "as is [out, in, kh, kw]"
    assert prov["consumers"] == [{"node": "conv", "op": "Conv", "input": 1, "via": ["Cast"]}]


def test_layout_names():
    assert layout_of(weight("l.weight", (8, 4)), (1, 0)) == "transposed [in, out]"
    assert layout_of(weight("c.weight", (8, 2, 3, 3), "conv", groups=4), (0, 1, 2, 3)) == "as is [out, in/g, kh, kw]"
