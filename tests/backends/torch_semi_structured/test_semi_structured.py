"""2:4 semi-structured swap: the eligibility rules (CPU), and parity on a GPU when there is one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsecc.backends.torch_semi_structured import (
    DeviceInfo,
    WeightInfo,
    check_linear_weight,
    is_2_4,
    shape_constraints,
    swap_semi_structured,
)
from sparsecc.testing import prune_

H100 = DeviceInfo((9, 0), "NVIDIA H100", cusparselt=True)
A100 = DeviceInfo((8, 0), "NVIDIA A100", cusparselt=True)


def _prune_linears(model: nn.Module) -> nn.Module:
    """Every linear weight of ``model`` made 2:4 by magnitude, in place."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            prune_(m.weight.data, "2:4")
    return model


def test_eligible_linear():
    v = check_linear_weight(WeightInfo((4096, 4096), torch.float16, True), H100)
    assert v.eligible and v.backend == "cusparselt" and v.reason == "2:4, float16 [4096, 4096] on cusparselt"


@pytest.mark.parametrize("info,device,backend,reason", [
    (WeightInfo((64, 64), torch.float16, True), DeviceInfo(None, "cpu"), "cusparselt", "needs a CUDA device (weight is on cpu)"),
    (WeightInfo((64, 64), torch.float16, True), DeviceInfo((7, 5), "Tesla T4"), "cusparselt",
     "Tesla T4 has compute capability 7.5; 2:4 sparse tensor cores need 8.0 or newer (Ampere+)"),
    (WeightInfo((64, 64), torch.float32, True), A100, "cutlass", "float32: the kernels' 2:4 path is for"),
    (WeightInfo((64, 64), torch.float16, True), H100, "cutlass",
     "torch's CUTLASS 2:4 kernels run on compute capability 8.x only; NVIDIA H100 is 9.0 (use cuSPARSELt)"),
    (WeightInfo((64, 64), torch.float16, True), DeviceInfo((9, 0), "NVIDIA H200", cusparselt=False), "cusparselt",
     "cuSPARSELt is not in this torch build and torch's CUTLASS 2:4 kernels run on compute capability 8.x only"),
    (WeightInfo((64, 64), torch.float64, True), H100, "cusparselt", "dtype float64 has no 2:4 kernels"),
    (WeightInfo((64, 64), torch.float16, False), H100, "cusparselt", "weight is not 2:4 along in_features"),
    (WeightInfo((10, 4096), torch.float16, True), A100, "cutlass",
     "shape [out=10, in=4096]: cutlass needs each of out and in to be at least and a multiple of (32, 64) for float16"),
    (WeightInfo((48, 96), torch.float16, True), A100, "cutlass", "shape [out=48, in=96]"),
])
def test_ineligible_with_reason(info, device, backend, reason):
    v = check_linear_weight(info, device, backend)
    assert not v.eligible and v.reason.startswith(reason)


def test_shape_rules_follow_the_installed_torch():
    # Each backend's minimums come from torch; a shape that is exactly the minimum is accepted.
    for backend in ("cutlass", "cusparselt"):
        for dtype in (torch.float16, torch.bfloat16, torch.int8):
            rows, cols = shape_constraints(backend)[dtype]
            ok = check_linear_weight(WeightInfo((rows, cols), dtype, True), A100, backend)
            assert ok.eligible, (backend, dtype, ok.reason)
            bad = check_linear_weight(WeightInfo((rows, cols + cols // 2), dtype, True), A100, backend)
            assert not bad.eligible


def test_cutlass_fallback_without_cusparselt():
    v = check_linear_weight(WeightInfo((128, 128), torch.bfloat16, True), DeviceInfo((8, 0), "A100", False))
    assert v.eligible and v.backend == "cutlass" and "cuSPARSELt not in this torch build" in v.reason


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of cusparselt, cutlass"):
        check_linear_weight(WeightInfo((64, 64), torch.float16, True), H100, "triton")


def test_is_2_4():
    w = torch.randn(8, 16)
    assert not is_2_4(w)
    assert is_2_4(prune_(w, "2:4"))
    assert not is_2_4(torch.zeros(8, 6))  # in_features not a multiple of 4


def test_swap_on_cpu_leaves_every_layer_dense_and_says_why():
    model = _prune_linears(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).half())
    before = copy.deepcopy(model.state_dict())
    report = swap_semi_structured(model)
    assert report.swapped == [] and report.summary() == "0 of 2 linear layers run 2:4 semi-structured"
    assert report.dense == {"0": "needs a CUDA device (weight is on cpu)", "2": "needs a CUDA device (weight is on cpu)"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _Tied(nn.Module):
    """Two linear layers that share one weight, and one whose weight is computed (an unfolded mask)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
        self.b.weight = self.a.weight
        self.register_buffer("mask", torch.ones(64, 64))

    def forward(self, x):
        return nn.functional.linear(self.b(self.a(x)), self.c.weight * self.mask)


def test_swap_on_exported_program_module_finds_linear_calls():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Sequential(nn.Linear(128, 32)))
    gm = torch.export.export(model, (torch.randn(2, 64),)).module()
    report = swap_semi_structured(gm)
    assert [(d.layer, d.shape, d.dtype) for d in report.decisions] == [("0", (128, 64), "float32"),
                                                                      ("2.0", (32, 128), "float32")]
    assert report.dense == {"0": "needs a CUDA device (weight is on cpu)", "2.0": "needs a CUDA device (weight is on cpu)"}


def test_shared_and_computed_weights_are_reported():
    gm = torch.export.export(_Tied(), (torch.randn(2, 64),)).module()
    report = swap_semi_structured(gm)
    layers = {d.layer: d.reason for d in report.decisions}
    assert layers["a"] == "needs a CUDA device (weight is on cpu)"
    assert layers["b"] == "shares its weight with a: needs a CUDA device (weight is on cpu)"
    computed = [r for r in layers.values() if r.startswith("weight is computed in the graph")]
    assert computed == ["weight is computed in the graph (by aten.mul.Tensor), not a stored parameter"]


def _pretend_eligible(monkeypatch):
    """Every 2:4 weight counts as eligible and 'compresses' to a dense copy, so the
    measured selection runs on a CPU."""
    from sparsecc.backends.torch_semi_structured import swap
    from sparsecc.backends.torch_semi_structured.eligibility import Eligibility

    monkeypatch.setattr(swap, "check_linear_weight", lambda info, dev, backend: Eligibility(info.is_2_4, "2:4", backend))
    monkeypatch.setattr(swap, "_compress", lambda w, backend: nn.Parameter(w.detach().clone(), requires_grad=False))


def test_measured_selection_swaps_only_layers_that_pay(monkeypatch):
    _pretend_eligible(monkeypatch)
    model = nn.Sequential(nn.Linear(64, 256), nn.Linear(256, 64), nn.Linear(64, 256), nn.Linear(256, 8))
    for m in model[:3]:
        prune_(m.weight.data, "2:4")
    dense_weights = [m.weight for m in model]
    calls = []

    def timer(dense, sparse, tokens):
        calls.append((tuple(dense.shape), tokens))
        return {(256, 64): 1.3, (64, 256): 0.7}[tuple(dense.shape)]

    report = swap_semi_structured(model, tokens=512, timer=timer)
    assert calls == [((256, 64), 512), ((64, 256), 512)]  # one timing per shape: layer 2 reuses layer 0's
    assert report.swapped == ["0", "2"]
    assert report.dense == {"1": "2:4 measured x0.70 of dense at 512 tokens (needs x1.05): kept dense",
                            "3": "2:4"}  # not 2:4: never timed
    assert [d.speedup for d in report.decisions] == [1.3, 0.7, 1.3, None]
    assert report.decisions[0].reason == "2:4; measured x1.30 of dense at 512 tokens"
    assert model[1].weight is dense_weights[1] and model[0].weight is not dense_weights[0]


def test_measured_selection_threshold_and_bad_tokens(monkeypatch):
    _pretend_eligible(monkeypatch)
    model = nn.Sequential(nn.Linear(64, 64))
    prune_(model[0].weight.data, "2:4")
    assert swap_semi_structured(copy.deepcopy(model), tokens=8, timer=lambda *a: 1.04).swapped == []
    assert swap_semi_structured(copy.deepcopy(model), tokens=8, timer=lambda *a: 1.04, min_speedup=1.0).swapped == ["0"]
    with pytest.raises(ValueError, match="tokens must be a positive number of rows per product, got 0"):
        swap_semi_structured(model, tokens=0)


def needs_sparse_tensor_cores(fn):
    """Marks a test gpu and skips it without a CUDA GPU of compute capability 8.0+."""
    fn = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0),
                            reason="needs compute capability 8.0+ (sparse tensor cores)")(fn)
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(fn)
    return pytest.mark.gpu(fn)


@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
@needs_sparse_tensor_cores
def test_swap_parity_on_gpu(backend):
    torch.manual_seed(0)
    model = _prune_linears(nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 10))).to("cuda", torch.float16)
    sparse = copy.deepcopy(model)
    report = swap_semi_structured(sparse, backend)
    if backend == "cutlass" and torch.cuda.get_device_capability()[0] != 8:
        # torch's CUTLASS 2:4 kernels are Ampere/Ada only: every layer stays dense, and says so.
        assert report.swapped == [] and "compute capability 8.x only" in report.dense["0"]
        return
    # 512x256 is eligible; 10x512 is below every backend's minimum rows.
    assert report.swapped == ["0"] and "2" in report.dense
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        want, got = model(x).float(), sparse(x).float()
    # fp16 kernels with different accumulation order: 1e-2 of the output scale (see the TensorRT FP16 tolerance).
    assert (got - want).abs().max() <= 1e-3 + 1e-2 * want.abs().max()


@needs_sparse_tensor_cores
def test_swap_parity_on_gpu_exported_program():
    """The path a sparsecc program takes: exported, unlifted, cast and moved, then swapped."""
    torch.manual_seed(0)
    model = _prune_linears(nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256), nn.LayerNorm(256)))
    gm = torch.export.export(model.eval(), (torch.randn(8, 4, 256),)).module().to("cuda", torch.float16)
    dense = copy.deepcopy(gm)
    report = swap_semi_structured(gm)
    assert report.swapped == ["0", "2"], report.dense
    x = torch.randn(8, 4, 256, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        want, got = dense(x).float(), gm(x).float()
    assert (got - want).abs().max() <= 1e-3 + 1e-2 * want.abs().max()


@needs_sparse_tensor_cores
def test_measured_selection_on_gpu():
    """Each decision carries its measured ratio, and only layers at or above the threshold run 2:4."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 11008), nn.ReLU(), nn.Linear(11008, 4096), nn.Linear(4096, 128))
    model = _prune_linears(model).to("cuda", torch.float16)
    dense = copy.deepcopy(model)
    report = swap_semi_structured(model, tokens=2048)
    for d in report.decisions:
        assert d.speedup is not None and d.speedup > 0, d
        assert d.swapped == (d.speedup >= 1.05), d
    x = torch.randn(2048, 4096, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        want, got = dense(x).float(), model(x).float()
    assert (got - want).abs().max() <= 1e-3 + 1e-2 * want.abs().max()
