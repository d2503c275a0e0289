"""Lowering failures and missing dependencies give one clear error."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

pytest.importorskip("executorch")

from sparsecc.backends.base import LowerOptions, LoweringError, MissingDependencyError  # noqa: E402
from sparsecc.backends.executorch import _deps  # noqa: E402


class Inverse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(self.fc(x))


def test_op_without_kernel_names_op_and_node(backend, tmp_path):
    program = torch.export.export(Inverse().eval(), (torch.randn(2, 4, 4),), strict=False)
    with pytest.raises(LoweringError) as info:
        backend.lower(program, tmp_path, LowerOptions())
    msg = str(info.value)
    assert "to_edge_transform_and_lower" in msg
    assert "op: aten.linalg_inv_ex.default" in msg
    assert "node: linalg_inv (aten.linalg_inv.default)" in msg
    assert not (tmp_path / "model.pte").exists()


def test_missing_dependency_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'sparsecc\[executorch\]'"):
        _deps.zstandard()
