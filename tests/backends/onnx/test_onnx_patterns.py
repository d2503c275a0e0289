"""verify_pattern: every MaskSpec re-checked in the ONNX initializers, in the ONNX layout."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")

from sparsecc.core.ir import MaskSpec, SparsityPattern  # noqa: E402

NM = SparsityPattern.n_m(2, 4)


def verify(cases, backend, *specs):
    checks = backend.verify_pattern(cases["attention"].artifact, specs)
    assert [c.fqn for c in checks] == [s.fqn for s in specs]
    return checks


def test_nm_on_the_reduction_axis_is_ok_and_eligible(cases, backend):
    (c,) = verify(cases, backend, MaskSpec("q.weight", NM, 0.5))
    assert c.ok and c.eligible and c.achieved == pytest.approx(0.5)
    assert c.layout == "transposed [in, out]"
    assert c.location == f"initializer '{cases['attention'].artifact.meta['provenance']['q.weight']['initializer']}'"


def test_nm_on_the_wrong_axis_fails(cases, backend):
    (c,) = verify(cases, backend, MaskSpec("v.weight", NM, 0.5))
    assert not c.ok and not c.eligible
    assert c.reason.startswith("pattern broken at group")


def test_unstructured(cases, backend):
    ok, too_much = verify(
        cases, backend,
        MaskSpec("ff1.weight", SparsityPattern.unstructured(), 0.9),
        MaskSpec("ff1.weight", SparsityPattern.unstructured(), 0.95),
    )
    assert ok.ok and ok.achieved == pytest.approx(0.9, abs=1 / 2048) and ok.eligible is None
    assert not too_much.ok and "expected at least 0.9500" in too_much.reason


def test_block_is_checked_in_the_pytorch_layout(cases, backend):
    # o.weight has 2x8 zero tiles in PyTorch's [out, in]; ONNX stores it as [in, out],
    # so the check must undo the transpose to find them.
    right, swapped = verify(
        cases, backend,
        MaskSpec("o.weight", SparsityPattern.blocks(2, 8), 0.5),
        MaskSpec("o.weight", SparsityPattern.blocks(8, 2), 0.5),
    )
    assert right.ok, right.reason
    assert not swapped.ok and "8x2 blocks are all zero" in swapped.reason


def test_channel(cases, backend):
    ok, wrong = verify(
        cases, backend,
        MaskSpec("ff2.weight", SparsityPattern.channel(), 0.25),
        MaskSpec("ff1.weight", SparsityPattern.channel(), 0.5),
    )
    assert ok.ok and ok.achieved == pytest.approx(0.25)
    assert not wrong.ok and "of 64 channels are all zero" in wrong.reason


def test_block_that_does_not_divide(cases, backend):
    (c,) = verify(cases, backend, MaskSpec("o.weight", SparsityPattern.blocks(3, 8), 0.5))
    assert not c.ok and c.reason == "block 3x8 does not divide the weight viewed as [32, 32]"


def test_unknown_weight(cases, backend):
    (c,) = verify(cases, backend, MaskSpec("nope.weight", SparsityPattern.unstructured(), 0.5))
    assert not c.ok and c.reason.startswith("not found in the ONNX model")


def test_conv_nm_with_folded_batchnorm(cases, backend):
    (c,) = backend.verify_pattern(cases["cnn"].artifact, [MaskSpec("c2.weight", NM, 0.5)])
    assert c.ok and c.eligible and c.layout == "as is [out, in, kh, kw]"
