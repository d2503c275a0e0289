"""Sparse initializers: smaller files where sparsity pays, identical ONNX Runtime outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsecc.backends.base import LowerOptions  # noqa: E402
from sparsecc.backends.onnx.graph_index import densify  # noqa: E402
from sparsecc.backends.onnx.sparse_initializers import sparse_nbytes, to_sparse_initializers  # noqa: E402
from sparsecc.core.ir import MaskSpec, SparsityPattern  # noqa: E402


@pytest.fixture(scope="module")
def sparse_attention(cases, backend, tmp_path_factory):
    case = cases["attention"]
    art = backend.lower(case.program, tmp_path_factory.mktemp("sparse"), LowerOptions(sparse_initializers=True))
    return case, art


def test_only_weights_sparse_enough_to_pay_are_converted(sparse_attention):
    case, art = sparse_attention
    prov = art.meta["provenance"]
    converted = set(art.meta["sparse_initializers"]["converted"])
    # ff1 is 90% zeros (pays); 2:4 (50%), 2x8 blocks (50%) and 25% channels do not.
    assert converted == {prov["ff1.weight"]["initializer"]}
    assert prov["ff1.weight"]["storage"].startswith("sparse")
    assert prov["q.weight"]["storage"] == "dense"
    model = onnx.load(str(art.path()))
    assert [s.values.name for s in model.graph.sparse_initializer] == [prov["ff1.weight"]["initializer"]]
    assert all(len(s.indices.dims) == 1 for s in model.graph.sparse_initializer)  # linear indices


def test_file_shrinks_by_the_saved_bytes(sparse_attention):
    case, art = sparse_attention
    dense_size = case.artifact.path().stat().st_size
    sparse_size = art.path().stat().st_size
    info = art.meta["sparse_initializers"]
    saved = info["dense_bytes"] - info["sparse_bytes"]
    assert saved > 0.6 * info["dense_bytes"]  # 90% zeros: 12 bytes per nonzero vs 4 per entry
    assert dense_size - sparse_size == pytest.approx(saved, rel=0.05)


def test_ort_outputs_identical_to_dense(sparse_attention, backend):
    case, art = sparse_attention
    dense, sparse = backend.load(case.artifact, threads=1), backend.load(art, threads=1)
    for shape in [(2, 5, 32), (3, 11, 32)]:
        x = torch.randn(shape)
        (a,), (b,) = dense([x]), sparse([x])
        torch.testing.assert_close(b, a, rtol=1e-4, atol=0)
        torch.testing.assert_close(b, case.program.module()(x).detach(), rtol=1e-4, atol=1e-5)


def test_verify_pattern_reads_sparse_initializers(sparse_attention, backend):
    _, art = sparse_attention
    (c,) = backend.verify_pattern(art, [MaskSpec("ff1.weight", SparsityPattern.unstructured(), 0.9)])
    assert c.ok and c.location.endswith("(sparse)")


def test_round_trip_and_thresholds():
    rng = np.random.default_rng(0)
    w90 = rng.standard_normal((64, 48)).astype(np.float32) * (rng.random((64, 48)) > 0.9)
    w50 = rng.standard_normal((64, 48)).astype(np.float32) * (rng.random((64, 48)) > 0.5)
    tiny = np.zeros((4, 4), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w90"], ["a"]),
            helper.make_node("Transpose", ["w50"], ["w50t"]),
            helper.make_node("MatMul", ["a", "w50t"], ["b"]),
            helper.make_node("ReduceSum", ["tiny"], ["tiny_sum"], keepdims=0),
            helper.make_node("Add", ["b", "tiny_sum"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((w90, "w90"), (w50, "w50"), (tiny, "tiny"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]

    report = to_sparse_initializers(model)
    assert report.converted == ["w90"]  # 50% does not pay; 64 bytes is below min_bytes
    assert report.sparse_bytes == sparse_nbytes(int((w90 != 0).sum()), 4)
    (sp,) = model.graph.sparse_initializer
    np.testing.assert_array_equal(densify(sp), w90)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
