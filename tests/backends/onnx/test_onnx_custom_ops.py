"""sparsecc's ONNX Runtime custom op (libsparsecc_ort.so, sparsecc.SparseMatMul) and the onnx-custom-ops target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sparsecc.backends.base import LowerOptions, get_backend  # noqa: E402
from sparsecc.backends.onnx import OnnxCustomOpsBackend  # noqa: E402
from sparsecc.backends.onnx.custom_ops import (block_choices, compress_np, decompress_np,  # noqa: E402
                                               dense_matmul_model, sparse_matmul_model)
from sparsecc.core.ir import MaskSpec, SparsityPattern  # noqa: E402
from sparsecc.core.ort_session import CustomOpLibraryError, open_session, session_options  # noqa: E402
from sparsecc.kernels.ort_library import LIBRARY_NAME, OrtLibraryError, build_library  # noqa: E402


@pytest.fixture(scope="module")
def library():
    try:
        return build_library()
    except OrtLibraryError as e:  # no apt-get / no Debian mirror: `make` fetches the headers where it can
        pytest.skip(f"the ONNX Runtime custom-op library cannot be built here: {e}")


def block_sparse(n: int, k: int, block: int, sparsity: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    if block == 1:
        return w * (rng.random((n, k)) >= sparsity)
    keep = rng.random((n // block, k // block)) >= sparsity
    return w * np.kron(keep, np.ones((block, block), np.float32))


def run(model, x: np.ndarray, library=None) -> np.ndarray:
    sess = open_session(model.SerializeToString(), session_options(1), library)
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("block", [1, 4, 8, 16])
@pytest.mark.parametrize("shape", [(1, 64), (37, 64), (2, 7, 64), (1, 128, 64)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_parity_with_dense_matmul(library, block, shape, with_bias):
    n = 48
    w = block_sparse(n, shape[-1], block, 0.8, seed=block)
    bias = np.random.default_rng(1).standard_normal(n).astype(np.float32) if with_bias else None
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    dense = run(dense_matmul_model(w, bias), x.reshape(-1, shape[-1])).reshape(*shape[:-1], n)
    model = sparse_matmul_model(w, bias, block)
    model.graph.input[0].type.tensor_type.shape.ClearField("dim")  # any rank: the op keeps the leading dims
    got = run(model, x, library)
    assert got.shape == (*shape[:-1], n)
    assert np.abs(got - dense).max() <= 1e-4 * np.abs(dense).max()


def test_compress_round_trip():
    w = block_sparse(32, 48, 8, 0.7)
    for b in (1, 8):
        assert np.array_equal(decompress_np(*compress_np(w, b), w.shape), w)
    assert block_choices(w) == [1, 8]  # 16x16 tiles would be three quarters empty


def test_without_the_library_the_error_names_it():
    model = sparse_matmul_model(block_sparse(16, 16, 4, 0.5), None, 4)
    with pytest.raises(CustomOpLibraryError, match=LIBRARY_NAME):
        open_session(model.SerializeToString(), session_options(1))


def test_missing_library_file_is_named(tmp_path):
    model = sparse_matmul_model(block_sparse(16, 16, 4, 0.5), None, 4)
    with pytest.raises(CustomOpLibraryError, match="missing"):
        open_session(model.SerializeToString(), session_options(1), tmp_path / LIBRARY_NAME)


def test_bad_indices_fail_naming_the_node(library):
    onnx = pytest.importorskip("onnx")
    model = sparse_matmul_model(block_sparse(16, 16, 4, 0.5), None, 4)
    col = next(t for t in model.graph.initializer if t.name == "col")
    col.CopyFrom(onnx.numpy_helper.from_array(np.full(col.dims, 99, np.int32), "col"))
    model.graph.node[0].name = "fc_broken"
    with pytest.raises(Exception, match="fc_broken.*col_indices"):
        run(model, np.ones((2, 16), np.float32), library)


class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 512), nn.Linear(512, 256, bias=False), nn.Linear(256, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def lowered(library, tmp_path_factory):
    torch.manual_seed(0)
    m = Wide().eval()
    with torch.no_grad():
        for fc in (m.fc1, m.fc2):
            fc.weight.copy_(torch.from_numpy(block_sparse(*fc.weight.shape, 8, 0.9)))
    x = torch.randn(2, 16, 256)
    program = torch.export.export(m, (x,), dynamic_shapes=({0: Dim("batch"), 1: Dim("seq")},))
    out = tmp_path_factory.mktemp("custom_ops")
    # margin 1e9: replace every sparse layer whatever the timing says, so the test does not depend on load
    options = LowerOptions(threads=1, extra={"example_inputs": [x], "custom_ops_margin": 1e9, "custom_ops_rounds": 2})
    return m, x, program, OnnxCustomOpsBackend().lower(program, out, options)


def test_target_is_registered():
    assert isinstance(get_backend("onnx-custom-ops"), OnnxCustomOpsBackend)


def test_lowering_replaces_sparse_layers(lowered):
    onnx = pytest.importorskip("onnx")
    _m, _x, _p, art = lowered
    meta = art.meta["custom_ops"]
    assert meta["replaced"] == 2 and meta["library"] == LIBRARY_NAME
    assert {e["fqn"] for e in meta["layers"]} == {"fc1.weight", "fc2.weight"}  # fc3 is dense: not timed
    assert all(e["tokens"] == 32 and e["median_s"]["dense"] > 0 for e in meta["layers"])
    model = onnx.load(str(art.path("model")))
    ops = [n for n in model.graph.node if n.domain == "sparsecc"]
    assert [n.op_type for n in ops] == ["SparseMatMul"] * 2
    assert len(ops[0].input) == 5 and len(ops[1].input) == 4  # fc1's bias Add folded in; fc2 has none
    assert art.meta["provenance"]["fc1.weight"]["custom_op"]["format"].startswith("bsr")
    assert (art.root / art.files["custom_ops_library"]).is_file()
    assert "register_custom_ops_library" in (art.root / art.files["custom_ops_example"]).read_text()


def test_lowered_parity_and_pattern(lowered):
    m, x, _p, art = lowered
    backend = OnnxCustomOpsBackend()
    got = backend.load(art)([x])[0]
    want = m(x).detach()
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    specs = [MaskSpec(f, SparsityPattern.parse("8x8"), 0.9) for f in ("fc1.weight", "fc2.weight")]
    checks = backend.verify_pattern(art, specs)
    assert all(c.ok for c in checks), [c.reason for c in checks]
    assert all("SparseMatMul" in c.location for c in checks)


def test_checks_after_lowering_say_which_layers_run_sparsecc_kernels(lowered):
    from sparsecc.backends.base import Support

    _m, _x, program, art = lowered
    checks = {c.fqn: c for c in OnnxCustomOpsBackend().check_artifact(program, art)}
    assert {f for f, c in checks.items() if c.support == Support.SPARSE} == {"fc1.weight", "fc2.weight"}
    assert "sparsecc.SparseMatMul (bsr 8x8) in libsparsecc_ort.so" in checks["fc1.weight"].reason
    assert checks["fc3.weight"].support == Support.DENSE  # dense weight: never timed


def test_profile_names_of_custom_op_nodes_map_to_their_layers(lowered):
    from sparsecc.benchmarking.onnx_layers import LayerMap

    _m, _x, _p, art = lowered
    lmap = LayerMap(art.path("model"), art.meta["provenance"])
    assert lmap.resolve("fc1.weight.sparsecc_kernel_time") == ("fc1", True)
    assert lmap.resolve("fc2.weight.sparsecc_kernel_time") == ("fc2", True)


def test_lowered_model_without_library_names_it(lowered):
    _m, _x, _p, art = lowered
    with pytest.raises(CustomOpLibraryError, match=LIBRARY_NAME):
        open_session(art.path("model"), session_options(1))


@pytest.mark.parametrize("block", [1, 8])
def test_parity_on_the_intra_op_pool(library, block):
    """Two threads: the row blocks and panel packing go through ONNX Runtime's KernelContext_ParallelFor."""
    w = block_sparse(512, 768, block, 0.9, seed=3)
    x = np.random.default_rng(4).standard_normal((200, 768)).astype(np.float32)
    dense = open_session(dense_matmul_model(w, None).SerializeToString(), session_options(2)).run(None, {"x": x})[0]
    sess = open_session(sparse_matmul_model(w, None, block).SerializeToString(), session_options(2), library)
    got = sess.run(None, {"x": x})[0]
    assert np.abs(got - dense).max() <= 1e-4 * np.abs(dense).max()


# -- sparsecc.SparseConv1x1: 1x1 convolutions on NCHW data ------------------------------------------------


@pytest.mark.parametrize("block", [1, 8])
@pytest.mark.parametrize("shape", [(1, 64, 7, 9), (3, 64, 1, 1), (2, 64, 16, 16)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv1x1_parity_with_dense_conv(library, block, shape, with_bias):
    n = 40
    w = block_sparse(n, shape[1], block, 0.8, seed=block + 5)
    bias = np.random.default_rng(1).standard_normal(n).astype(np.float32) if with_bias else None
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    dense = run(dense_matmul_model(w, bias, conv1x1=True), x)
    got = run(sparse_matmul_model(w, bias, block, conv1x1=True), x, library)
    assert got.shape == dense.shape == (shape[0], n, *shape[2:])
    assert np.abs(got - dense).max() <= 1e-4 * np.abs(dense).max()


def test_conv1x1_wrong_channels_fail_naming_the_op(library):
    model = sparse_matmul_model(block_sparse(16, 32, 4, 0.5), None, 4, conv1x1=True)
    model.graph.input[0].type.tensor_type.shape.ClearField("dim")
    model.graph.node[0].name = "pw_conv"
    with pytest.raises(Exception, match=r"SparseConv1x1 node 'pw_conv'.*\[B, in_features = 32, H, W\]"):
        run(model, np.ones((1, 16, 4, 4), np.float32), library)


class PointwiseNet(nn.Module):
    """1x1 expand (with BatchNorm, folded at export) -> 3x3 depthwise -> 1x1 project with a bias, then a 3x3 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.expand, self.bn = nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256)
        self.dw = nn.Conv2d(256, 256, 3, padding=1, groups=256)
        self.project = nn.Conv2d(256, 64, 1)
        self.spatial = nn.Conv2d(64, 64, 3, padding=1)  # 3x3: not a candidate even when sparse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.expand(x)))
        return self.spatial(self.project(torch.relu(self.dw(h))))


def test_lowering_replaces_pointwise_convs(library, tmp_path):
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    m = PointwiseNet().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        for conv in (m.expand, m.project):
            conv.weight.copy_(torch.from_numpy(block_sparse(conv.out_channels, conv.in_channels, 8, 0.9))[..., None, None])
        m.spatial.weight.mul_((torch.rand_like(m.spatial.weight) > 0.9).float())
    x = torch.randn(2, 64, 12, 10)
    program = torch.export.export(m, (x,), dynamic_shapes=({0: Dim("batch")},))
    options = LowerOptions(threads=1, extra={"example_inputs": [x], "custom_ops_margin": 1e9, "custom_ops_rounds": 2})
    art = OnnxCustomOpsBackend().lower(program, tmp_path, options)
    meta = art.meta["custom_ops"]
    assert meta["ops"] == ["SparseConv1x1"] and meta["replaced"] == 2
    assert {e["fqn"]: e["tokens"] for e in meta["layers"]} == {"expand.weight": 240, "project.weight": 240}
    model = onnx.load(str(art.path("model")))
    ops = [n for n in model.graph.node if n.domain == "sparsecc"]
    assert [n.op_type for n in ops] == ["SparseConv1x1"] * 2
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 2  # depthwise and 3x3 stay ONNX convs
    assert len(ops[1].input) == 5  # project's bias kept
    got = OnnxCustomOpsBackend().load(art)([x])[0]
    want = m(x).detach()
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    specs = [MaskSpec(f, SparsityPattern.parse("8x8"), 0.9) for f in ("expand.weight", "project.weight")]
    checks = OnnxCustomOpsBackend().verify_pattern(art, specs)
    assert all(c.ok for c in checks), [c.reason for c in checks]
    assert all("SparseConv1x1" in c.location for c in checks)
