"""The golden-graph helper compares structure: arguments, wiring and state shapes, not just op names.

Each case is a pair of graphs with the same op-name list (what golden tests
compared before), which `assert_same_structure` must tell apart, naming the
differing lines of both.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsecc import MaskSpec, SparsityPattern
from sparsecc.passes import ComputeMasksPass, InsertMasksPass
from sparsecc.testing import assert_same_structure, canonical_graph, check_golden, export_module, normalized_ops

X = (torch.randn(4, 16),)


class Leaky(nn.Module):
    def __init__(self, slope: float):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 16)
        self.slope = slope

    def forward(self, x):
        return F.leaky_relu(self.fc(x), self.slope)


class Difference(nn.Module):
    def __init__(self, swap: bool):
        super().__init__()
        self.a, self.b = nn.Linear(16, 8), nn.Linear(16, 8)
        self.swap = swap

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        return z - y if self.swap else y - z


class Scaled(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.scale = torch.ones(16, dtype=dtype)  # a lifted constant

    def forward(self, x):
        return self.fc(x) * self.scale


def _pair(a: nn.Module, b: nn.Module):
    pa, pb = export_module(a, X), export_module(b, X)
    assert normalized_ops(pa) == normalized_ops(pb)  # the old comparison saw no difference
    return pa, pb


def test_a_changed_argument_is_caught():
    got, want = _pair(Leaky(0.2), Leaky(0.1))
    with pytest.raises(AssertionError) as e:
        assert_same_structure(got, want, "slope")
    msg = str(e.value)
    assert msg.startswith("slope: graphs differ")
    assert "-%4 = aten.leaky_relu.default(%3, 0.1)" in msg and "+%4 = aten.leaky_relu.default(%3, 0.2)" in msg


def test_a_rewired_input_is_caught():
    got, want = _pair(Difference(swap=True), Difference(swap=False))
    with pytest.raises(AssertionError) as e:
        assert_same_structure(got, want)
    msg = str(e.value)
    assert "-%7 = aten.sub.Tensor(%5, %6)" in msg and "+%7 = aten.sub.Tensor(%6, %5)" in msg


def test_a_constant_of_another_dtype_is_caught():
    got, want = _pair(Scaled(torch.float16), Scaled(torch.float32))
    with pytest.raises(AssertionError) as e:
        assert_same_structure(got, want)
    assert "-%2 = constant_tensor float32[16]" in str(e.value) and "+%2 = constant_tensor float16[16]" in str(e.value)


def test_names_do_not_count():
    # the same graph from differently named modules and parameters
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.other = nn.Linear(16, 16)

        def forward(self, inp):
            return F.leaky_relu(self.other(inp), 0.1)

    assert_same_structure(export_module(Renamed(), X), export_module(Leaky(0.1), X))
    assert canonical_graph(export_module(Leaky(0.1), X)) == [
        "%0 = parameter float32[16, 16]",
        "%1 = parameter float32[16]",
        "%2 = user_input",
        "%3 = aten.linear.default(%2, %0, %1)",
        "%4 = aten.leaky_relu.default(%3, 0.1)",
        "return (%4,) as ['user_output']",
    ]


class SharedWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class SharedWeightFirstUseMasked(nn.Module):
    """A wrong golden: only the first use of the shared weight is masked (same op names as the right one)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.m = torch.ones(16, 16, dtype=torch.bool)

    def forward(self, x):
        h = F.linear(x, self.fc.weight * self.m, self.fc.bias)
        return F.linear(torch.relu(h), self.fc.weight, self.fc.bias)


def test_check_golden_rejects_a_golden_with_the_wrong_wiring():
    plan = [MaskSpec("fc.weight", SparsityPattern.n_m(2, 4), 0.5)]
    with pytest.raises(AssertionError) as e:
        check_golden(SharedWeight(), InsertMasksPass(), SharedWeightFirstUseMasked(), X,
                     prepare=lambda p: ComputeMasksPass(plan)(p).program)
    msg = str(e.value)
    assert msg.startswith("InsertMasksPass: graphs differ")
    # the golden's second linear reads the raw weight (%0); the pass masks both uses (%4)
    assert "-%7 = aten.linear.default(%6, %0, %1)" in msg and "+%7 = aten.linear.default(%6, %4, %1)" in msg
