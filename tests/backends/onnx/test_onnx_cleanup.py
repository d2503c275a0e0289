"""Graph cleanup: Identity nodes, redundant Cast chains, constant subgraphs and dead nodes go."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsecc.backends.onnx.cleanup import clean_graph  # noqa: E402


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["x1"], name="id_in"),
        helper.make_node("Cast", ["x1"], ["x64"], to=TensorProto.DOUBLE, name="widen"),
        helper.make_node("Cast", ["x64"], ["x32"], to=TensorProto.FLOAT, name="narrow"),
        helper.make_node("Transpose", ["w_nk"], ["w"], perm=[1, 0], name="wt"),  # constant subgraph
        helper.make_node("MatMul", ["x32", "w"], ["mm"], name="mm"),
        helper.make_node("Cast", ["mm"], ["mm_same"], to=TensorProto.FLOAT, name="same"),
        helper.make_node("Relu", ["x"], ["dead"], name="dead"),
        helper.make_node("Identity", ["mm_same"], ["y"], name="id_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        initializer=[numpy_helper.from_array(w.T.copy(), "w_nk")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def test_cleanup_keeps_only_the_matmul():
    model = build()
    cleaned, stats = clean_graph(model)
    assert [n.op_type for n in cleaned.graph.node] == ["MatMul"]
    assert [o.name for o in cleaned.graph.output] == ["y"]  # the output keeps its name
    assert stats.identities_removed == 2 and stats.casts_removed == 3
    assert (stats.nodes_before, stats.nodes_after) == (8, 1)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(cleaned, x), run(model, x))


def test_lossy_cast_round_trip_is_kept():
    model = build()
    # float32 -> float16 -> float32 rounds: it is not a no-op and must stay.
    for n in model.graph.node:
        if n.name == "widen":
            n.attribute[0].i = TensorProto.FLOAT16
    model = onnx.shape_inference.infer_shapes(model)
    cleaned, _ = clean_graph(model)
    assert [n.op_type for n in cleaned.graph.node].count("Cast") == 2


def test_node_scopes_survive(cases):
    model = onnx.load(str(cases["attention"].artifact.path()))
    keys = {p.key for n in model.graph.node for p in n.metadata_props}
    assert keys == {"namespace", "pkg.torch.onnx.name_scopes"}
