"""The float64 referee: a case that misses the fixed fp32 bound passes only if the artifact is as close to the
float64 program as PyTorch's fp32 output is (within REFEREE_FACTOR); the bound it passed at is recorded and
`sparsecc verify` uses it."""

import pytest
import torch
from torch.export import export

from sparsecc.verify.float64_referee import REFEREE_FACTOR, float64_module, float64_outputs, referee
from sparsecc.verify.parity import compare


class _UpcastNorm(torch.nn.Module):
    """An RMSNorm with the explicit float32 upcast LLaMA-style models have, then a linear."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16))
        self.lin = torch.nn.Linear(16, 8)

    def forward(self, x):
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.lin(self.w * h.to(x.dtype))


def test_float64_outputs_compute_every_step_in_float64_and_leave_the_program_alone():
    torch.manual_seed(0)
    model = _UpcastNorm().eval()
    x = torch.randn(4, 16)
    program = export(model, (x,))
    (out,) = float64_outputs(float64_module(program), (x,), {})
    assert out.dtype == torch.float64
    m64 = _UpcastNorm().double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    h = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6)
    want = m64.lin(m64.w * h)
    # float64 agrees to 1e-14; a float32 cast left in the graph would leave a 1e-7 difference
    torch.testing.assert_close(out, want, rtol=1e-13, atol=1e-13)
    assert all(p.dtype == torch.float32 for p in program.state_dict.values())
    assert program.module()(x).dtype == torch.float32


def _case(exact, want, got, rtol=1e-9, atol=0.0):
    case = compare([got], [want], "x", rtol, atol)
    assert not case["ok"]  # the fixed bound fails: the referee's situation
    return referee(case, [got], [want], [exact], rtol, atol)


def test_an_artifact_as_close_to_float64_as_pytorch_passes_and_records_its_bound():
    gen = torch.Generator().manual_seed(0)
    exact = torch.randn(64, 32, generator=gen, dtype=torch.float64) * 10
    noise = 1e-5
    want = exact + noise * torch.randn(exact.shape, generator=gen, dtype=torch.float64)  # PyTorch's fp32 error
    got = exact + noise * torch.randn(exact.shape, generator=gen, dtype=torch.float64)  # the artifact's, alike
    case = _case(exact, want, got)
    assert case["ok"]
    note = case["float64"][0]
    assert note["artifact_err"] <= REFEREE_FACTOR * note["pytorch_err"]
    scale = float(want.abs().max())
    assert case["rtol"] == pytest.approx((REFEREE_FACTOR + 1) * note["pytorch_err"] / scale)
    assert compare([got], [want], "x", case["rtol"], 0.0)["ok"]  # what verify recomputes from the stored outputs


def test_an_artifact_further_from_float64_than_rounding_fails():
    gen = torch.Generator().manual_seed(1)
    exact = torch.randn(64, 32, generator=gen, dtype=torch.float64) * 10
    want = exact + 1e-5 * torch.randn(exact.shape, generator=gen, dtype=torch.float64)
    got = exact.clone()
    got[3, 7] += 1e-3  # one wrong element, 100x the rounding
    case = _case(exact, want, got)
    assert not case["ok"]
    assert case["float64"][0]["artifact_err"] > REFEREE_FACTOR * case["float64"][0]["pytorch_err"]
    assert "rtol" not in case


def test_a_shape_mismatch_is_not_refereed():
    want, exact = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    case = compare([torch.zeros(2)], [want], "x")
    assert not referee(case, [torch.zeros(2)], [want], [exact], 1e-4, 1e-5)["ok"]
