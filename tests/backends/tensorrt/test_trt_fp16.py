"""FP16 conversion: types rewritten, names kept, 2:4 intact, outputs within FP16 tolerance.

Tolerance: FP16_RTOL = 1e-2 of each output's largest magnitude (atol 1e-3).
FP16 keeps 11 significant bits (unit roundoff 4.9e-4) and every layer rounds
its activations again; the models here measure 2e-4 (resnet) and 6e-4
(MiniLM) on ONNX Runtime's CPU provider, and the bound leaves room for GPU
kernels that accumulate in FP16 while still failing a wrong layer, whose
error is of the order of the output itself.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from sparsecc.backends.onnx.verify_nm import check_nm
from sparsecc.backends.tensorrt.fp16 import FP16_MAX, to_fp16
from sparsecc.backends.tensorrt.golden_compare import FP16_ATOL, FP16_RTOL


def _two_four(rows: int, cols: int, rng: np.random.Generator, tiny: bool = False) -> np.ndarray:
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    keep = np.zeros((rows, cols // 4, 4), bool)
    for idx in np.ndindex(rows, cols // 4):
        keep[idx][rng.choice(4, 2, replace=False)] = True
    w = w * keep.reshape(rows, cols)
    if tiny:  # values below FP16's smallest subnormal round to zero
        w[:, ::8] *= 1e-9
    return w


def _model(weight_kn: np.ndarray) -> onnx.ModelProto:
    """x[B,K] @ W[K,N] * Constant + Cast(float) of ConstantOfShape -> y, plus an int64 passthrough."""
    k, n = weight_kn.shape
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"], name="node_MatMul_1"),
        helper.make_node("Constant", [], ["c"], name="node_Constant_2",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Mul", ["mm", "c"], ["scaled"], name="node_Mul_3"),
        helper.make_node("Shape", ["scaled"], ["shape"], name="node_Shape_4"),
        helper.make_node("ConstantOfShape", ["shape"], ["ones"], name="node_ConstantOfShape_5",
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Cast", ["ids"], ["ids_f"], name="node_Cast_6", to=TensorProto.FLOAT),
        helper.make_node("Add", ["scaled", "ones"], ["t"], name="node_Add_7"),
        helper.make_node("Add", ["t", "ids_f"], ["y"], name="node_Add_8"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(weight_kn, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def test_types_names_and_parity():
    rng = np.random.default_rng(0)
    w = _two_four(32, 64, rng).T.copy()  # MatMul B [K=64, N=32], 2:4 along K (axis 0)
    model = _model(w)
    fp32 = onnx.ModelProto()
    fp32.CopyFrom(model)
    stats = to_fp16(model)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.initializer] == ["W"]
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT16
    assert stats.initializers == 1 and stats.constants == 2 and stats.casts == 1
    assert stats.io_casts == ["x", "y"]
    # I/O stay float32 by default; int64 inputs are untouched.
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.input[1].type.tensor_type.elem_type == TensorProto.INT64
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    feed = {"x": rng.standard_normal((3, 64)).astype(np.float32), "ids": np.array([[1], [2], [3]], np.int64)}
    want, got = _run(fp32, feed), _run(model, feed)
    assert got.dtype == np.float32
    err = np.abs(got - want).max()
    assert err <= FP16_ATOL + FP16_RTOL * np.abs(want).max()
    assert err > 0  # it really computed in FP16


def test_fp16_io():
    rng = np.random.default_rng(1)
    model = _model(_two_four(32, 64, rng).T.copy())
    stats = to_fp16(model, io="float16")
    assert stats.io_casts == []
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    out = _run(model, {"x": rng.standard_normal((2, 64)).astype(np.float16), "ids": np.zeros((2, 1), np.int64)})
    assert out.dtype == np.float16


def test_out_of_range_values_are_clamped_and_counted():
    w = np.zeros((64, 32), np.float32)
    w[0, 0], w[4, 1] = 1e6, -3.4e38
    model = _model(w)
    stats = to_fp16(model)
    half = numpy_helper.to_array(model.graph.initializer[0])
    assert stats.clamped_values == 2 and stats.clamped_tensors == ["W"]
    assert half[0, 0] == FP16_MAX and half[4, 1] == -FP16_MAX and np.isfinite(half).all()


def test_bad_io_and_subgraphs_are_refused():
    model = _model(np.zeros((64, 32), np.float32))
    with pytest.raises(ValueError, match="io must be one of"):
        to_fp16(model, io="int8")
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "then", [],
                             [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=then))
    with pytest.raises(NotImplementedError, match="subgraphs"):
        to_fp16(model)


@settings(max_examples=25, deadline=None)
@given(k=st.sampled_from([8, 16, 64]), n=st.integers(1, 12), seed=st.integers(0, 2**16), tiny=st.booleans())
def test_two_four_survives_conversion(k, n, seed, tiny):
    model = _model(_two_four(n, k, np.random.default_rng(seed), tiny).T.copy())
    assert check_nm(model)[0].eligible
    to_fp16(model)
    layer = check_nm(model)[0]
    assert layer.eligible, layer.reason
    assert onnx.TensorProto.DataType.Name(model.graph.initializer[0].data_type) == "FLOAT16"


def test_uncomputed_float_output_is_refused():
    w = np.zeros((64, 32), np.float32)
    model = _model(w)
    model.graph.output.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [64, 32]))
    with pytest.raises(NotImplementedError, match="output 'W' is a graph input or an initializer"):
        to_fp16(model)
