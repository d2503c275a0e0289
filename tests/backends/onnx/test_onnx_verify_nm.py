"""The N:M verifier on hand-built ONNX graphs: right axis, wrong axis, through
Transpose / Cast / DequantizeLinear, K not a multiple of M, broken groups."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsecc.backends.onnx import check_nm  # noqa: E402
from sparsecc.backends.onnx.verify_nm import nm_violation  # noqa: E402


def nm_along(shape: tuple[int, ...], axis: int, n: int = 2, m: int = 4, seed: int = 0) -> np.ndarray:
    """Random fp32 weights with at most n nonzeros in every m consecutive entries along ``axis``."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, size=shape).astype(np.float32) * rng.choice([-1, 1], size=shape)
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(-1, m)
    for g in groups:
        g[rng.permutation(m)[: m - n]] = 0
    return np.moveaxis(groups.reshape(moved.shape), -1, axis).astype(np.float32)


def make_model(nodes, inputs, initializers, out_rank: int = 2) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"y{i}" for i in range(out_rank)])
    graph = helper.make_graph(nodes, "g", inputs, [out], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    return model


def x_input(*shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))


def matmul_model(w: np.ndarray) -> onnx.ModelProto:
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [x_input("b", w.shape[0])],
        [numpy_helper.from_array(w, "W")],
    )


def only(model: onnx.ModelProto):
    (layer,) = check_nm(model)
    return layer


def test_matmul_right_axis():
    layer = only(matmul_model(nm_along((16, 8), axis=0)))  # B is [K, N]: K is axis 0
    assert layer.eligible, layer.reason
    assert (layer.node, layer.op, layer.initializer, layer.axis, layer.shape) == ("mm", "MatMul", "W", 0, (16, 8))
    assert layer.sparsity == pytest.approx(0.5)


def test_matmul_wrong_axis():
    layer = only(matmul_model(nm_along((16, 8), axis=1)))
    assert not layer.eligible
    assert layer.reason.startswith("wrong axis: 2:4 holds along axis 1"), layer.reason
    assert "TensorRT reads axis 0" in layer.reason


@pytest.mark.parametrize("trans_b, axis", [(1, 1), (0, 0)])
def test_gemm_axis_follows_transb(trans_b, axis):
    w = nm_along((8, 12), axis=axis)
    x = x_input("b", 12 if trans_b else 8)
    nodes = [helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm", transB=trans_b)]
    layer = only(make_model(nodes, [x], [numpy_helper.from_array(w, "W")]))
    assert layer.eligible and layer.axis == axis, layer.reason
    # The same weight read with the other transB is pruned along the wrong axis.
    x_other = x_input("b", 8 if trans_b else 12)
    nodes = [helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm", transB=1 - trans_b)]
    other = only(make_model(nodes, [x_other], [numpy_helper.from_array(w, "W")]))
    assert not other.eligible and other.reason.startswith("wrong axis"), other.reason


def test_behind_transpose():
    w_nk = nm_along((8, 16), axis=1)  # stored [N, K], 2:4 along K
    nodes = [
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "Wt"], ["y"], name="mm"),
    ]
    layer = only(make_model(nodes, [x_input("b", 16)], [numpy_helper.from_array(w_nk, "W")]))
    assert layer.eligible, layer.reason
    assert (layer.initializer, layer.axis, layer.path) == ("W", 1, ("Transpose",))


def test_behind_transpose_with_a_non_involutive_perm():
    # A conv weight stored HWIO [kh, kw, Cin, Cout] and transposed to OIHW:
    # output axis 1 (Cin) is stored axis perm[1] = 2.
    hwio = nm_along((3, 3, 8, 4), axis=2)
    nodes = [
        helper.make_node("Transpose", ["W"], ["Woihw"], perm=[3, 2, 0, 1]),
        helper.make_node("Conv", ["x", "Woihw"], ["y"], name="conv"),
    ]
    layer = only(make_model(nodes, [x_input(1, 8, 6, 6)], [numpy_helper.from_array(hwio, "W")], out_rank=4))
    assert layer.eligible and layer.axis == 2, layer.reason


def test_behind_cast():
    w16 = nm_along((16, 8), axis=0).astype(np.float16)
    nodes = [
        helper.make_node("Cast", ["W"], ["W32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "W32"], ["y"], name="mm"),
    ]
    layer = only(make_model(nodes, [x_input("b", 16)], [numpy_helper.from_array(w16, "W")]))
    assert layer.eligible and layer.path == ("Cast",), layer.reason


@pytest.mark.parametrize("zero_point", [0, 3])
def test_behind_dequantize_linear_uses_the_zero_point(zero_point):
    pattern = nm_along((16, 8), axis=0) != 0
    q = np.where(pattern, 7, zero_point).astype(np.int8)  # stored zeros are the zero point
    inits = [
        numpy_helper.from_array(q, "Wq"),
        numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
        numpy_helper.from_array(np.array(zero_point, np.int8), "zp"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["Wq", "scale", "zp"], ["W"]),
        helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
    ]
    layer = only(make_model(nodes, [x_input("b", 16)], inits))
    assert layer.eligible and layer.path == ("DequantizeLinear",), layer.reason
    # Read against the wrong zero point, the same integers are dense.
    inits[2] = numpy_helper.from_array(np.array(zero_point + 1, np.int8), "zp")
    assert not only(make_model(nodes, [x_input("b", 16)], inits)).eligible


def test_per_channel_zero_point():
    pattern = nm_along((16, 8), axis=0) != 0
    zp = np.arange(8, dtype=np.int8)  # one per output column (axis 1)
    q = np.where(pattern, 100, zp[None, :]).astype(np.int8)
    inits = [
        numpy_helper.from_array(q, "Wq"),
        numpy_helper.from_array(np.full(8, 0.1, np.float32), "scale"),
        numpy_helper.from_array(zp, "zp"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["Wq", "scale", "zp"], ["W"], axis=1),
        helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
    ]
    assert only(make_model(nodes, [x_input("b", 16)], inits)).eligible


def test_conv_input_channels():
    w = nm_along((4, 8, 3, 3), axis=1)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")]
    layer = only(make_model(nodes, [x_input(1, 8, 6, 6)], [numpy_helper.from_array(w, "W")], out_rank=4))
    assert layer.eligible and layer.axis == 1, layer.reason


def test_conv_k_not_a_multiple_of_4():
    w = np.zeros((4, 3, 3, 3), np.float32)
    w[:, 0] = 1.0
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")]
    layer = only(make_model(nodes, [x_input(1, 3, 6, 6)], [numpy_helper.from_array(w, "W")], out_rank=4))
    assert not layer.eligible and layer.reason == "K=3 not a multiple of 4"


def test_broken_group_is_located():
    w = nm_along((16, 8), axis=0)
    # Groups are numbered row-major over (N, K/4): column 4, K entries 4..7 is group 4 * 4 + 1.
    w[4:8, 4] = 1.0
    layer = only(matmul_model(w))
    assert not layer.eligible
    assert layer.reason.startswith("pattern broken at group 17 (4 nonzeros in the 4 entries from index [4, 4]")
    assert "1 of 32 groups break 2:4" in layer.reason


def test_activation_matmul_is_reported_not_eligible():
    nodes = [helper.make_node("MatMul", ["x", "x2"], ["y"], name="qk")]
    inputs = [x_input("b", 8), helper.make_tensor_value_info("x2", TensorProto.FLOAT, [8, 4])]
    layer = only(make_model(nodes, inputs, []))
    assert not layer.eligible and layer.initializer is None
    assert layer.reason == "no constant operand: both inputs are computed at run time"


def test_constant_a_operand_uses_its_last_axis():
    w = nm_along((8, 16), axis=1)  # A is [M, K]
    nodes = [helper.make_node("MatMul", ["W", "x"], ["y"], name="mm")]
    layer = only(make_model(nodes, [x_input(16, "n")], [numpy_helper.from_array(w, "W")]))
    assert layer.eligible and layer.weight_input == 0 and layer.axis == 1, layer.reason


def test_unsupported_dtype():
    w = (nm_along((16, 8), axis=0) != 0).astype(np.int32)
    nodes = [
        helper.make_node("Cast", ["W"], ["Wf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "Wf"], ["y"], name="mm"),
    ]
    layer = only(make_model(nodes, [x_input("b", 16)], [numpy_helper.from_array(w, "W")]))
    assert not layer.eligible and layer.reason == "dtype INT32 has no sparse kernels"


def test_other_n_m_and_arguments():
    w = nm_along((16, 8), axis=0, n=1, m=4)
    assert only(matmul_model(w)).eligible
    (layer,) = check_nm(matmul_model(w), n=4, m=8)
    assert layer.eligible
    with pytest.raises(ValueError):
        check_nm(matmul_model(w), n=4, m=4)


@settings(max_examples=40, deadline=None)
@given(
    outer=st.integers(1, 5),
    groups=st.integers(1, 6),
    inner=st.integers(1, 3),
    m=st.sampled_from([4, 8]),
    seed=st.integers(0, 2**16),
)
def test_nm_violation_property(outer, groups, inner, m, seed):
    n = m // 2
    w = nm_along((outer, groups * m, inner), axis=1, n=n, m=m, seed=seed)
    assert nm_violation(w, 1, n, m) is None
    rng = np.random.default_rng(seed)
    i, g, j = rng.integers(outer), rng.integers(groups), rng.integers(inner)
    w[i, g * m : (g + 1) * m, j] = 1.0  # one full group
    why = nm_violation(w, 1, n, m)
    assert why is not None and f"from index [{i}, {g * m}, {j}]" in why
