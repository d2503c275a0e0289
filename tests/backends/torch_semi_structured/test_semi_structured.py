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


def test_eligible_linear():
    v = check_linear_weight(WeightInfo((4096, 4096), torch.float16, True), H100)
    assert v.eligible and v.backend == "cusparselt" and v.reason == "2:4, float16 [4096, 4096] on cusparselt"


@pytest.mark.parametrize("info,device,backend,reason", [
    (WeightInfo((64, 64), torch.float16, True), DeviceInfo(None, "cpu"), "cusparselt", "needs a CUDA device (weight is on cpu)"),
    (WeightInfo((64, 64), torch.float16, True), DeviceInfo((7, 5), "Tesla T4"), "cusparselt",
     "Tesla T4 has compute capability 7.5; 2:4 sparse tensor cores need 8.0 or newer (Ampere+)"),
    (WeightInfo((64, 64), torch.float32, True), H100, "cutlass", "float32: the kernels' 2:4 path is for"),
    (WeightInfo((64, 64), torch.float64, True), H100, "cusparselt", "dtype float64 has no 2:4 kernels"),
    (WeightInfo((64, 64), torch.float16, False), H100, "cusparselt", "weight is not 2:4 along in_features"),
    (WeightInfo((10, 4096), torch.float16, True), H100, "cutlass",
     "shape [out=10, in=4096]: cutlass needs each of out and in to be at least and a multiple of (32, 64) for float16"),
    (WeightInfo((48, 96), torch.float16, True), H100, "cutlass", "shape [out=48, in=96]"),
])
def test_ineligible_with_reason(info, device, backend, reason):
    v = check_linear_weight(info, device, backend)
    assert not v.eligible and v.reason.startswith(reason)


def test_shape_rules_follow_the_installed_torch():
    # Each backend's minimums come from torch; a shape that is exactly the minimum is accepted.
    for backend in ("cutlass", "cusparselt"):
        for dtype in (torch.float16, torch.bfloat16, torch.int8):
            rows, cols = shape_constraints(backend)[dtype]
            ok = check_linear_weight(WeightInfo((rows, cols), dtype, True), H100, backend)
            assert ok.eligible, (backend, dtype, ok.reason)
            bad = check_linear_weight(WeightInfo((rows, cols + cols // 2), dtype, True), H100, backend)
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
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).half()
    for m in model:
        if isinstance(m, nn.Linear):
            prune_(m.weight.data, "2:4")
    before = copy.deepcopy(model.state_dict())
    report = swap_semi_structured(model)
    assert report.swapped == [] and report.summary() == "0 of 2 linear layers run 2:4 semi-structured"
    assert report.dense == {"0": "needs a CUDA device (weight is on cpu)", "2": "needs a CUDA device (weight is on cpu)"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0),
                    reason="needs compute capability 8.0+ (sparse tensor cores)")
@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
def test_swap_parity_on_gpu(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 10)).to("cuda", torch.float16).eval()
    for m in model:
        if isinstance(m, nn.Linear):
            prune_(m.weight.data, "2:4")
    sparse = copy.deepcopy(model)
    report = swap_semi_structured(sparse, backend)
    # 512x256 is eligible; 10x512 is below every backend's minimum rows.
    assert report.swapped == ["0"] and "2" in report.dense
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        want, got = model(x).float(), sparse(x).float()
    # fp16 kernels with different accumulation order: 1e-2 of the output scale (see the TensorRT FP16 tolerance).
    assert (got - want).abs().max() <= 1e-3 + 1e-2 * want.abs().max()
