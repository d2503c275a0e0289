"""Small models shared by the recovery tests (captured once per module that asks)."""

from __future__ import annotations

import torch

from sparsecc.testing import export_module


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(32, 64)
        self.b = torch.nn.Linear(64, 64)
        self.c = torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.head = torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(y.mean((2, 3)))


def mlp_program(seed: int = 0):
    torch.manual_seed(seed)
    return export_module(MLP(), (torch.randn(8, 32),))


def conv_program(seed: int = 0):
    torch.manual_seed(seed)
    return export_module(ConvNet(), (torch.randn(2, 4, 8, 8),))


def mlp_batches(n: int = 8, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(8, 32, generator=g),), {}) for _ in range(n)]


def conv_batches(n: int = 4, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(2, 4, 8, 8, generator=g),), {}) for _ in range(n)]


# recipe per pattern kind: every kind the masks support
PATTERNS = {
    "unstructured": {"pattern": "unstructured", "sparsity": 0.6},
    "2:4": {"pattern": "2:4"},
    "block": {"pattern": "4x4", "sparsity": 0.5},
    "channel": {"pattern": "channel", "sparsity": 0.25},
}


def output_error(program, dense, batches) -> float:
    """|| y - y_dense ||² / || y_dense ||² of ``program`` against ``dense`` over ``batches``."""
    num = den = 0.0
    with torch.no_grad():
        m, d = program.module(), dense.module()
        for a, k in batches:
            y, yd = m(*a, **k), d(*a, **k)
            num += float((y - yd).pow(2).sum())
            den += float(yd.pow(2).sum())
    return num / den
