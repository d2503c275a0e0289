"""Clear errors: an op the exporter cannot translate, and inputs that do not fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")

from sparsecc.backends.base import InputMismatchError, LoweringError, MissingDependencyError  # noqa: E402
from sparsecc.backends.onnx import _deps  # noqa: E402


@torch.library.custom_op("sparsecc_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mystery(self.fc(x))


class WithCustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def test_untranslatable_op_names_node_and_op(tmp_path, backend, tools):
    program = tools.capture(WithCustomOp().eval(), torch.randn(2, 4), None)
    with pytest.raises(LoweringError) as info:
        backend.lower(program, tmp_path)
    msg = str(info.value)
    assert "at node 'mystery' (op sparsecc_test.mystery.default) in module 'block'" in msg
    assert "has no ONNX translation" in msg and "custom_translation_table" in msg
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize(
    "inputs, match",
    [
        ([torch.randn(2, 5, 16)], r"input x: float32\[batch, seq, 32\]: got shape \[2, 5, 16\]"),
        ([torch.randn(2, 32)], r"input x: float32\[batch, seq, 32\]: got shape \[2, 32\]"),
        ([torch.randn(2, 5, 32, dtype=torch.float64)], r"input x: float32\[batch, seq, 32\]: got dtype float64"),
        ([], r"expected 1 inputs \(x: float32\[batch, seq, 32\]\), got 0"),
        ([torch.randn(2, 5, 32), torch.randn(1)], r"expected 1 inputs"),
    ],
)
def test_bad_inputs_name_the_expected_spec(cases, backend, inputs, match):
    art = cases["attention"].artifact
    with pytest.raises(InputMismatchError, match=match):
        backend.run(art, inputs)
    with pytest.raises(InputMismatchError, match=match):
        backend.load(art)(inputs)


def test_missing_dependency_is_one_line(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "onnx_graphsurgeon":
            raise ImportError("no module")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(MissingDependencyError, match=r"pip install 'sparsecc\[onnx\]'"):
        _deps.graphsurgeon()
