"""sparsecc.SparseMatMulInt8 (libsparsecc_ort.so) and its use by the onnx-custom-ops target on int8 programs."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import sparsecc  # noqa: E402
from sparsecc.backends.base import LowerOptions  # noqa: E402
from sparsecc.backends.onnx import OnnxCustomOpsBackend  # noqa: E402
from sparsecc.backends.onnx.custom_ops import decompress_np  # noqa: E402
from sparsecc.backends.onnx.custom_ops_int8 import (compress_int8_np, find_int8_candidates,  # noqa: E402
                                                    int8_block_choices, sparse_int8_model)
from sparsecc.core.ort_session import open_session, session_options  # noqa: E402
from sparsecc.core.program import state_tensor  # noqa: E402
from sparsecc.flows.sparsify import mask_specs  # noqa: E402
from sparsecc.kernels import int8 as k8  # noqa: E402
from sparsecc.kernels.ort_library import OrtLibraryError, build_library  # noqa: E402
from sparsecc.passes.quantize_weights import int8_grid, quant_info  # noqa: E402
from sparsecc.testing import export_module  # noqa: E402


@pytest.fixture(scope="module")
def library():
    try:
        return build_library()
    except OrtLibraryError as e:
        pytest.skip(f"the ONNX Runtime custom-op library cannot be built here: {e}")


@pytest.fixture(scope="module")
def ort_int8_isa(library) -> str:
    """The instruction set the op runs with: the torch op is asked for the same one, so the two must agree exactly."""
    lib = ctypes.CDLL(str(library))
    lib.SparseccOrtInt8Isa.restype = ctypes.c_char_p
    return lib.SparseccOrtInt8Isa().decode()


def int8_weight(n: int, k: int, block: tuple[int, int], sparsity: float, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    br, bc = block
    keep = torch.rand(n // br, k // bc, generator=g) >= sparsity
    w = w * keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)
    return k8.quantize_per_channel(w)


def run(model, x: np.ndarray, library, threads: int = 1) -> np.ndarray:
    return open_session(model.SerializeToString(), session_options(threads), library).run(None, {"x": x})[0]


def any_rank(model):
    model.graph.input[0].type.tensor_type.shape.ClearField("dim")  # the op keeps the leading dims
    return model


@pytest.mark.parametrize("block", [1, 4, 8, 16])
@pytest.mark.parametrize("shape", [(1, 128), (5, 128), (8, 128), (37, 128), (2, 7, 128), (1, 150, 128)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_the_torch_int8_op(library, ort_int8_isa, block, shape, with_bias):
    """Bit for bit: the same driver (int8_driver.h) and kernels on the same ISA, dequantized with contraction off.

    Tokens 1..8 on 8x8 / 16x16 blocks take the few-token VNNI path where the CPU has it; 37 and 150 tokens
    cross the vector width and (150) the tile."""
    n = 48
    br_bc = (1, 4) if block == 1 else (block, block)
    q, scale = int8_weight(n, shape[-1], br_bc, sparsity=0.3 + 0.1 * (block % 7), seed=block)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(1)) if with_bias else None
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 3
    want = k8.int8_linear(x, k8.compress_int8(q, scale, br_bc), bias, isa=ort_int8_isa).numpy()
    model = any_rank(sparse_int8_model(q.numpy(), scale.numpy(), None if bias is None else bias.numpy(), block))
    got = run(model, x.numpy(), library)
    assert got.shape == (*shape[:-1], n)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("act_scale", [0.0, 0.02])
def test_static_scale_and_the_intra_op_pool(library, ort_int8_isa, act_scale):
    """Two threads (ONNX Runtime's KernelContext_ParallelFor) and a static activation scale: still exact."""
    q, scale = int8_weight(256, 512, (8, 8), 0.9, seed=3)
    x = torch.randn(300, 512, generator=torch.Generator().manual_seed(4))
    want = k8.int8_linear(x, k8.compress_int8(q, scale, 8), None, act_scale, isa=ort_int8_isa).numpy()
    got = run(sparse_int8_model(q.numpy(), scale.numpy(), None, 8, act_scale), x.numpy(), library, threads=2)
    assert np.array_equal(got, want)


def test_weights_given_at_run_time(library, ort_int8_isa):
    """Integers fed as graph inputs, not initializers: the row sums are made per call, same result."""
    q, scale = int8_weight(32, 64, (4, 4), 0.5, seed=5)
    model = sparse_int8_model(q.numpy(), scale.numpy(), None, 4)
    feeds = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in ("crow", "values")}
    keep = [t for t in model.graph.initializer if t.name not in feeds]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.input.extend(onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                                                list(v.shape)) for k, v in feeds.items())
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(6))
    sess = open_session(model.SerializeToString(), session_options(1), library)
    got = sess.run(None, {"x": x.numpy(), **feeds})[0]
    want = k8.int8_linear(x, k8.compress_int8(q, scale, 4), isa=ort_int8_isa).numpy()
    assert np.array_equal(got, want)


def test_packing_matches_compress_int8():
    q, scale = int8_weight(32, 64, (1, 4), 0.6, seed=7)
    for block, torch_block in ((1, (1, 4)), (8, 8)):
        crow, col, values = compress_int8_np(q.numpy(), block)
        ref = k8.compress_int8(q, scale, torch_block)
        assert np.array_equal(crow, ref.crow_indices.numpy()) and np.array_equal(col, ref.col_indices.numpy())
        assert np.array_equal(values, ref.values.numpy())
        assert np.array_equal(decompress_np(crow, col, values, q.shape), q.numpy())
    q8, _ = int8_weight(32, 64, (8, 8), 0.6, seed=8)
    assert int8_block_choices(q8.numpy()) == [1, 8]


@pytest.mark.parametrize("what", ["col", "crow", "values"])
def test_bad_inputs_fail_naming_the_node(library, what):
    q, scale = int8_weight(16, 32, (4, 4), 0.5, seed=9)
    model = sparse_int8_model(q.numpy(), scale.numpy(), None, 4)
    t = next(t for t in model.graph.initializer if t.name == what)
    a = onnx.numpy_helper.to_array(t)
    bad = {"col": lambda: np.full_like(a, 99), "crow": lambda: a[::-1].copy(),
           "values": lambda: a[:, :, :2].copy()}[what]()
    t.CopyFrom(onnx.numpy_helper.from_array(bad, what))
    model.graph.node[0].name = "fc_broken"
    with pytest.raises(Exception, match=f"SparseMatMulInt8 node 'fc_broken'.*{what}"):
        run(model, np.ones((2, 32), np.float32), library)


def test_a_block_without_int8_kernel_is_refused(library):
    q, scale = int8_weight(16, 32, (4, 4), 0.5, seed=9)
    model = sparse_int8_model(q.numpy(), scale.numpy(), None, 4)
    next(a for a in model.graph.node[0].attribute if a.name == "block").i = 2  # block 2: fp32 only
    with pytest.raises(Exception, match="SparseMatMulInt8.*block 2"):
        run(model, np.ones((2, 32), np.float32), library)


# -- the onnx-custom-ops target on a program quantized with `quantize: int8` ------------------------------


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(256, 512), nn.Linear(512, 256, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def lowered(library, tmp_path_factory):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 256)
    recipe = {"pattern": "8x8", "sparsity": 0.9, "quantize": "int8"}
    program = sparsecc.sparsify(export_module(Two().eval(), (x,)), recipe, fold=True).program
    # margin 1e9: every int8 sparse layer is replaced whatever the timing says
    options = LowerOptions(threads=1, extra={"example_inputs": [x], "custom_ops_margin": 1e9, "custom_ops_rounds": 2})
    return program, x, OnnxCustomOpsBackend().lower(program, tmp_path_factory.mktemp("int8_custom"), options)


def test_int8_layers_are_replaced_with_the_programs_integers(lowered):
    program, _x, art = lowered
    meta = art.meta["custom_ops"]
    assert meta["replaced"] == 2 and meta["ops"] == ["SparseMatMulInt8"]
    prov = art.meta["provenance"]
    for e in meta["layers"]:  # ONNX Runtime's int8 layer is timed where it is accurate on this CPU
        assert set(e["median_s"]) >= ({"dense"} if "ort_int8_rejected" in prov[e["fqn"]] else {"dense", "dense_int8"})
    model = onnx.load(str(art.path("model")))
    assert [n.op_type for n in model.graph.node if n.domain == "sparsecc"] == ["SparseMatMulInt8"] * 2
    assert not [n for n in model.graph.node if n.op_type in ("DequantizeLinear", "MatMul", "Gemm")]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for fqn in ("fc1.weight", "fc2.weight"):
        op = art.meta["provenance"][fqn]["custom_op"]
        assert op["op"] == "SparseMatMulInt8" and op["act_scale"] == 0.0
        q, scale = int8_grid(program, fqn)
        stored = decompress_np(inits[op["crow_indices"]], inits[op["col_indices"]], inits[op["values"]], op["shape"])
        assert stored.dtype == np.int8 and np.array_equal(stored, q.numpy())
        assert np.array_equal(inits[op["scales"]], scale.numpy())  # bit for bit, as DequantizeLinear held them
    assert find_int8_candidates(model, set(inits)) == []  # nothing int8 left for the op


def test_int8_pattern_verifies_through_the_op(lowered):
    program, _x, art = lowered
    checks = OnnxCustomOpsBackend().verify_pattern(art, list(mask_specs(program).values()))
    assert len(checks) == 2 and all(c.ok for c in checks), [c.reason for c in checks]
    assert all("SparseMatMulInt8" in c.location for c in checks)


def _layer_bound(x_err: torch.Tensor, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest |y_ort - y| of one dynamic-int8 layer y = x w^T + b, given |x_ort - x| <= x_err.

    Activation quantization of the input it sees: s_t = max|x_ort[t]| / 127, every entry within s_t / 2
    of its grid point (no clipping: |x| / s_t <= 127), so it adds (s_t / 2) sum_k |w_nk|; the error already
    in the input adds |w| x_err; fp32 rounding of the exact int32 sum's dequantize and bias add is at most
    a few ulps of |y|, and the fake-quantized program's own fp32 summation K u |w| |x|.
    """
    u, k = 2.0 ** -24, w.shape[1]
    s = (x.abs() + x_err).amax(-1, keepdim=True) / 127
    wa = w.abs()
    return x_err @ wa.t() + s / 2 * wa.sum(1) + k * u * (x.abs() + x_err) @ wa.t() + 4 * u * y.abs()


def test_int8_parity_with_the_fake_quantized_program(lowered):
    """Within the per-layer activation-quantization bound, propagated through the ReLU (1-Lipschitz)."""
    program, x, art = lowered
    got = torch.as_tensor(OnnxCustomOpsBackend().load(art)([x])[0])
    w1, b1, w2 = (state_tensor(program, n).detach() for n in ("fc1.weight", "fc1.bias", "fc2.weight"))
    assert quant_info(program, "fc1.weight")["scale"]  # the program is int8 (weights fake-quantized)
    with torch.no_grad():
        h = torch.relu(x @ w1.t() + b1)
        want = program.module()(x)
    e1 = _layer_bound(torch.zeros_like(x), x, w1, x @ w1.t() + b1)
    bound = _layer_bound(e1, h, w2, want)
    err = (got - want).abs()
    assert torch.all(err <= bound), float((err - bound).max())
    assert float(err.max()) > 0  # the activations really were quantized


def _lower_where_the_op_loses(tmp_path):
    """fc1 sparse int8 (timed, margin 1e-9: the op never wins), fc2 dense int8: (x, program, backend, artifact)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 256)
    recipe = {"pattern": "8x8", "sparsity": 0.9, "quantize": "int8", "layers": {"exclude": ["fc2"]}}
    program = sparsecc.sparsify(export_module(Two().eval(), (x,)), recipe, fold=True).program
    backend = OnnxCustomOpsBackend()
    art = backend.lower(program, tmp_path, LowerOptions(threads=1, extra={
        "example_inputs": [x], "custom_ops_margin": 1e-9, "custom_ops_rounds": 2}))
    return x, program, backend, art


def test_int8_layers_the_op_loses_run_onnx_runtimes_int8_kernel(library, tmp_path):
    """margin 1e-9: the op never wins. Each timed layer becomes ONNX Runtime's own int8 layer where that was the
    faster dense one (DynamicQuantizeMatMul over the program's integers and scales), an int8 weight too dense to
    time becomes it unconditionally, and none is left as a weight-only DequantizeLinear at fp32 speed unless fp32
    measured faster; parity follows the dynamic int8 tolerance of the deepest chain."""
    from sparsecc.verify.parity import int8_parity_tolerance

    x, program, backend, art = _lower_where_the_op_loses(tmp_path)
    meta = art.meta["custom_ops"]
    assert meta["replaced"] == 0 and [e["fqn"] for e in meta["layers"]] == ["fc1.weight"]  # fc2 is dense int8
    model = onnx.load(str(art.path("model")))
    ort_int8 = {n.name for n in model.graph.node if (n.domain, n.op_type) == ("com.microsoft", "DynamicQuantizeMatMul")}
    fc1, prov = meta["layers"][0], art.meta["provenance"]
    assert ("fc1.weight.ort_int8" in ort_int8) == (fc1["reference"] == "dense_int8")
    # ONNX Runtime's int8 layer wherever it is accurate on this CPU (without VNNI its kernels can saturate)
    assert ("dense_int8" in fc1["median_s"]) == ("ort_int8_rejected" not in prov["fc1.weight"])
    fits = "ort_int8_rejected" not in prov["fc2.weight"]
    assert ("fc2.weight.ort_int8" in ort_int8) == fits == bool(prov["fc2.weight"].get("ort_int8"))
    depth = 2  # fc1 -> fc2, each int8 whichever kernel runs it (ONNX Runtime fuses weight-only QDQ MatMuls too)
    assert art.meta["parity_tol"]["int8_depth"] == depth
    assert (backend.parity_rtol, backend.parity_atol) == int8_parity_tolerance(depth)
    got = backend.load(art)([x])[0]
    want = program.module()(x).detach()
    err = float((got - want).abs().max() / want.abs().max())
    assert 0 < err <= backend.parity_rtol, err
    checks = backend.verify_pattern(art, list(mask_specs(program).values()))
    assert checks and all(c.ok for c in checks), [c.reason for c in checks]
    from sparsecc.benchmarking.onnx_layers import LayerMap  # a profile of the int8 node names its layer

    if fits:
        layers = LayerMap(art.path("model"), prov)
        assert layers.resolve("fc2.weight.ort_int8_kernel_time") == (prov["fc2.weight"]["layer"], True)


def test_an_onnx_runtime_int8_layer_off_on_this_cpu_is_not_used(library, tmp_path, monkeypatch):
    """Where ONNX Runtime's int8 layer misses one int8 layer's tolerance (saturating u8 x s8 kernels without
    VNNI), the layer stays a weight-only DequantizeLinear and says why; the artifact keeps int8 parity."""
    import sparsecc.backends.onnx.custom_ops_int8 as ci8

    monkeypatch.setattr(ci8, "ort_int8_error", lambda c, shape: 0.15)
    x, program, backend, art = _lower_where_the_op_loses(tmp_path)
    model = onnx.load(str(art.path("model")))
    assert not [n.name for n in model.graph.node if n.op_type == "DynamicQuantizeMatMul"]
    for fqn in ("fc1.weight", "fc2.weight"):
        assert "off by 0.150 of the largest output" in art.meta["provenance"][fqn]["ort_int8_rejected"]
    assert "dense_int8" not in art.meta["custom_ops"]["layers"][0]["median_s"]
    assert art.meta["parity_tol"]["int8_depth"] == 2  # weight-only QDQ: ONNX Runtime may still quantize
    got = backend.load(art)([x])[0]
    want = program.module()(x).detach()
    assert float((got - want).abs().max() / want.abs().max()) <= backend.parity_rtol


def test_onnx_runtimes_int8_layer_is_measured_against_fp32():
    """`ort_int8_error` on weights whose adjacent pairs cannot saturate 16-bit lanes (|q| <= 63): within the
    per-layer tolerance on every CPU; and it is the error of the written node, not of a requantized copy."""
    from sparsecc.backends.onnx.custom_ops_int8 import Int8Candidate, ort_int8_error
    from sparsecc.verify.parity import INT8_RTOL_PER_LAYER

    rng = np.random.default_rng(0)
    q = rng.integers(-63, 64, (64, 128)).astype(np.int8)
    c = Int8Candidate(node=None, x="x", initializer="w", q=q, scale=np.full(64, 0.01, np.float32),
                      bias=rng.standard_normal(64).astype(np.float32), output="y", pos=(0,))
    err = ort_int8_error(c, (32, 128))
    assert 0 < err < INT8_RTOL_PER_LAYER, err


def test_compile_of_an_int8_program_checks_parity_at_the_int8_tolerance(library, tmp_path):
    """A bundle whose layers quantize activations at run time (the op, or ONNX Runtime's int8 layer) is compared
    with the fake-quantized program at the dynamic int8 tolerance, not fp32's 1e-4 (which it cannot meet)."""
    import json

    from sparsecc.flows.compile import compile

    torch.manual_seed(0)
    compile(Two().eval(), {"pattern": "8x8", "sparsity": 0.9, "quantize": "int8"}, tmp_path / "b",
            example_args=(torch.randn(2, 16, 256),), targets=["onnx-custom-ops"], dense_reference=False)
    target = json.loads((tmp_path / "b" / "manifest.json").read_text())["targets"]["onnx-custom-ops"]
    depth = target["artifact"]["meta"]["custom_ops"]["int8_depth"]
    assert target["parity"]["ok"] and depth >= 1
    assert target["parity"]["rtol"] == pytest.approx(min(0.25, depth * 4 / 255))
