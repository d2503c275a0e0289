"""Program preparation: split-to-slice rewrite and dynamic dim bounds (no ExecuTorch needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import Dim

from sparsecc.backends.base import InputMismatchError, TensorSpec
from sparsecc.backends.executorch.dynamic_dims import check_dims, find_dynamic_dims
from sparsecc.backends.executorch.split_to_slices import SPLIT_OPS, split_to_slices


class Splits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = x.split(4, dim=-1)
        d, e = x.chunk(2, dim=-1)
        f, g = x.split([5, 7], dim=1)
        h, i = x.split([x.shape[0] - 1, 1], dim=0)  # along the dynamic batch: must stay a split
        rows = (a * b + c).sum(-1) + d.sum(-1) * e.mean(-1) + f.mean(-1) - g.sum(-1)
        return rows + h.sum() * i.sum()


def _split_ops(program):
    return [n for n in program.graph.nodes if n.op == "call_function" and n.target in SPLIT_OPS]


def test_splits_along_static_dims_become_slices():
    x = torch.randn(3, 12)
    program = torch.export.export(Splits(), (x,), dynamic_shapes=({0: Dim("batch", min=3, max=8)},), strict=False)
    want = program.module()(x)
    assert split_to_slices(program) == 3
    (left,) = _split_ops(program)
    assert (left.args[2] if len(left.args) > 2 else 0) == 0  # the split along the batch
    torch.testing.assert_close(program.module()(x), want, rtol=0, atol=0)


def test_dims_are_named_and_bounded():
    program = torch.export.export(
        nn.Linear(4, 4), (torch.randn(3, 5, 4),),
        dynamic_shapes=({0: Dim("b", min=1, max=9), 1: Dim("t")},), strict=False,
    )
    with pytest.warns(UserWarning, match="seq .* no upper bound"):
        dims = {d.name: d for d in find_dynamic_dims(program).values()}
    assert (dims["batch"].max, dims["batch"].bound_from) == (9, "program")
    assert (dims["seq"].max, dims["seq"].bound_from) == (5, "example")
    dims = {d.name: d for d in find_dynamic_dims(program, {"input": {1: "tokens"}}, {"tokens": 77}).values()}
    assert (dims["tokens"].max, dims["tokens"].bound_from) == (77, "options")


def test_check_dims_bounds_and_consistency():
    program = torch.export.export(
        nn.Bilinear(4, 4, 2), (torch.randn(3, 4), torch.randn(3, 4)),
        dynamic_shapes=({0: Dim("b", max=8)}, {0: Dim("b", max=8)}), strict=False,
    )
    dims = list(find_dynamic_dims(program).values())
    specs = [TensorSpec("a", ("batch", 4), "float32"), TensorSpec("b", ("batch", 4), "float32")]
    check_dims(dims, specs, [torch.randn(8, 4), torch.randn(8, 4)])
    with pytest.raises(InputMismatchError, match="above the artifact's bound 8"):
        check_dims(dims, specs, [torch.randn(9, 4), torch.randn(9, 4)])
    with pytest.raises(InputMismatchError, match=r"batch is 3 at a\[0\] but 4 at b\[0\]"):
        check_dims(dims, specs, [torch.randn(3, 4), torch.randn(4, 4)])


def test_artifact_bounds_follow_a_range_the_lowering_narrowed():
    import sympy
    from torch.utils._sympy.value_ranges import ValueRanges

    from sparsecc.backends.executorch.dynamic_dims import DynamicDim, narrow_to_lowered

    dims = {"s0": DynamicDim("s0", "batch", 1, 64, "program", ("x[0]",)),
            "s1": DynamicDim("s1", "seq", 1, 128, "options", ("x[1]",))}

    class Lowered:  # what narrow_to_lowered reads of an edge program
        range_constraints = {sympy.Symbol("s0"): ValueRanges(2, 15), sympy.Symbol("s1"): ValueRanges(2, 512)}

    with pytest.warns(UserWarning, match="narrowed dynamic dim batch from <= 64 to <= 15"):
        got = narrow_to_lowered(dims, Lowered())
    assert got["s0"] == DynamicDim("s0", "batch", 1, 15, "lowering", ("x[0]",))
    assert got["s1"] == dims["s1"]  # a wider range does not raise the bound
