"""Small sparse models, their exported programs and their ``.pte`` lowerings.

Weights are made sparse by hand (they already hold the zeros, as after mask
folding), then the models are captured with `torch.export` with bounded
dynamic dims. ExecuTorch lowering costs seconds per model, so each model is
lowered once per session and the lowerings are shared by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from sparsecc.backends.base import Artifact, LowerOptions
from sparsecc.backends.executorch import ExecuTorchBackend
from sparsecc.testing import prune_

# -- making weights sparse -------------------------------------------------------


def nm_(weight: torch.Tensor, axis: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive entries along ``axis``, in place."""
    return prune_(weight, f"{n}:{m}", reduction_axis=axis)


def unstructured_(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    return prune_(weight, "unstructured", sparsity)


# -- models ---------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, d_in: int = 16, hidden: int = 32, d_out: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    """Conv-BN-ReLU, a depthwise + pointwise residual block, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.c3 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.c1(x)))
        y = y + self.pw(torch.relu(self.dw(y)))
        y = torch.relu(self.c3(y))
        return self.fc(y.mean((2, 3)))


class Attention(nn.Module):
    """Self-attention with a fused QKV projection (split into q, k, v) on ``[batch, seq, d]``."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in self.qkv(x).split(d, dim=-1)
        )
        a = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1) @ v
        return x + self.o(a.transpose(1, 2).reshape(b, t, d))


class Partial(nn.Module):
    """A float32 body XNNPACK takes; a float64 head and a cumsum it does not."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 32)
        self.head = nn.Linear(32, 8).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.body(x))
        return torch.cumsum(self.head(y.double()).float(), dim=-1)


@dataclass
class Case:
    """A sparse model, its captured program, an example input and its lowering."""

    name: str
    model: nn.Module
    program: ExportedProgram
    example: torch.Tensor
    artifact: Artifact


def build_mlp() -> tuple[nn.Module, torch.Tensor, tuple]:
    torch.manual_seed(0)
    m = MLP().eval()
    nm_(m.fc1.weight, axis=1)
    unstructured_(m.fc2.weight, 0.5)
    return m, torch.randn(4, 16), ({0: Dim("batch", min=1, max=64)},)


def build_cnn() -> tuple[nn.Module, torch.Tensor, tuple]:
    torch.manual_seed(1)
    m = CNN().eval()
    with torch.no_grad():
        m.bn1.running_mean.normal_(0, 0.5)
        m.bn1.running_var.uniform_(0.5, 2.0)
        m.bn1.weight.normal_(1, 0.3)
        m.bn1.bias.normal_(0, 0.3)
    nm_(m.c1.weight, axis=1, n=1, m=3)  # Cin = 3: 1:3 along the input channels
    unstructured_(m.dw.weight, 0.5)
    unstructured_(m.pw.weight, 0.9)
    nm_(m.c3.weight, axis=1)
    nm_(m.fc.weight, axis=1)
    return m, torch.randn(2, 3, 12, 12), ({0: Dim("batch", min=1, max=8)},)


def build_attention() -> tuple[nn.Module, torch.Tensor, tuple]:
    torch.manual_seed(2)
    m = Attention().eval()
    nm_(m.qkv.weight, axis=1)
    unstructured_(m.o.weight, 0.9)
    return m, torch.randn(2, 5, 32), ({0: Dim("batch", min=1, max=4), 1: Dim("seq", min=2, max=32)},)


def build_partial() -> tuple[nn.Module, torch.Tensor, tuple]:
    torch.manual_seed(3)
    m = Partial().eval()
    nm_(m.body.weight, axis=1)
    unstructured_(m.head.weight, 0.5)
    return m, torch.randn(4, 16), ({0: Dim("batch", min=1, max=32)},)


BUILDERS = {"mlp": build_mlp, "cnn": build_cnn, "attention": build_attention, "partial": build_partial}


def capture(model: nn.Module, example: torch.Tensor, dynamic: tuple) -> ExportedProgram:
    return torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=False)


@pytest.fixture(scope="session")
def backend() -> ExecuTorchBackend:
    pytest.importorskip("executorch")
    pytest.importorskip("zstandard")
    return ExecuTorchBackend()


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory, backend: ExecuTorchBackend) -> dict[str, Case]:
    """Every model, lowered once."""
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
    return SimpleNamespace(nm_=nm_, unstructured_=unstructured_, capture=capture)
