"""Small sparse models, their exported programs and their ONNX lowerings.

Models are made sparse by hand (the weights already hold the zeros, as after
mask folding), then captured with `torch.export` with dynamic dims. Each
model is lowered once per session; the lowerings are shared by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from sparsecc.backends.base import Artifact, LowerOptions
from sparsecc.backends.onnx import OnnxBackend
from sparsecc.testing import prune_


# -- making weights sparse -------------------------------------------------------


def nm_(weight: torch.Tensor, axis: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive entries along ``axis``, in place."""
    return prune_(weight, f"{n}:{m}", reduction_axis=axis)


def unstructured_(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    return prune_(weight, "unstructured", sparsity)


def blocks_(weight: torch.Tensor, rows: int, cols: int, sparsity: float) -> torch.Tensor:
    return prune_(weight, f"{rows}x{cols}", sparsity)


# -- models ---------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 30)
        self.fc3 = nn.Linear(30, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    """Conv-BN-ReLU, a residual conv-BN block, a 1x1 conv, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.c1(x)))
        y = torch.relu(y + self.bn2(self.c2(y)))
        y = torch.relu(self.c3(y))
        return self.fc(y.mean((2, 3)))


class Attention(nn.Module):
    """A post-LN transformer block on ``[batch, seq, d]`` inputs."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        a = nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        x = self.ln1(x + self.o(a.transpose(1, 2).reshape(b, t, d)))
        return self.ln2(x + self.ff2(torch.relu(self.ff1(x))))


@dataclass
class Case:
    """A sparse model, its captured program, an example input and its lowering."""

    name: str
    model: nn.Module
    program: ExportedProgram
    example: torch.Tensor
    artifact: Artifact


def _randomize_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)


def build_mlp() -> tuple[nn.Module, torch.Tensor, tuple]:
    torch.manual_seed(0)
    m = MLP().eval()
    nm_(m.fc1.weight, axis=1)
    unstructured_(m.fc2.weight, 0.5)
    return m, torch.randn(4, 16), ({0: Dim("batch")},)


def build_cnn() -> tuple[nn.Module, torch.Tensor, tuple]:
    torch.manual_seed(1)
    m = CNN().eval()
    _randomize_bn(m)
    nm_(m.c2.weight, axis=1)
    unstructured_(m.c3.weight, 0.9)
    nm_(m.fc.weight, axis=1)
    return m, torch.randn(2, 3, 12, 12), ({0: Dim("batch")},)


def build_attention() -> tuple[nn.Module, torch.Tensor, tuple]:
    torch.manual_seed(2)
    m = Attention().eval()
    nm_(m.q.weight, axis=1)
    nm_(m.k.weight, axis=1)
    nm_(m.v.weight, axis=0)  # 2:4 on the wrong axis: no TensorRT speedup
    blocks_(m.o.weight, 2, 8, 0.5)
    unstructured_(m.ff1.weight, 0.9)
    with torch.no_grad():
        m.ff2.weight[::4] = 0  # 8 of 32 output channels
    return m, torch.randn(2, 5, 32), ({0: Dim("batch"), 1: Dim("seq")},)


BUILDERS = {"mlp": build_mlp, "cnn": build_cnn, "attention": build_attention}


def capture(model: nn.Module, example: torch.Tensor, dynamic: tuple) -> ExportedProgram:
    return torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=False)


@pytest.fixture(scope="session")
def backend() -> OnnxBackend:
    return OnnxBackend()


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory, backend: OnnxBackend) -> dict[str, Case]:
    """Every model, lowered once (dense initializers)."""
    out = {}
    for name, build in BUILDERS.items():
        model, example, dynamic = build()
        program = capture(model, example, dynamic)
        artifact = backend.lower(program, tmp_path_factory.mktemp(name), LowerOptions())
        out[name] = Case(name, model, program, example, artifact)
    return out


@pytest.fixture(scope="session")
def tools() -> SimpleNamespace:
    """The sparsifying helpers and `capture`, for tests that build their own model."""
    return SimpleNamespace(nm_=nm_, unstructured_=unstructured_, blocks_=blocks_, capture=capture)
