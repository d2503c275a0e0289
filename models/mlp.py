"""A plain multilayer perceptron: the smallest model with prunable Linear layers."""

from __future__ import annotations

import torch
from torch import nn

from ._common import batch_dim, generator, seeded
from .base import ModelSpec

__all__ = ["MLP", "build_mlp"]


class MLP(nn.Module):
    def __init__(self, in_features: int = 64, hidden: int = 256, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


def build_mlp(seed: int = 0) -> ModelSpec:
    """MLP 64 -> 256 -> 256 -> 10 with ReLU; input [batch, 64]."""
    in_features = 64
    with seeded(seed):
        model = MLP(in_features).eval()

    def make_inputs(batch: int, seq: int = 0):
        return (torch.randn(batch, in_features, generator=generator(seed + batch)),), {}

    args, _ = make_inputs(2)
    return ModelSpec(
        name="mlp",
        model=model,
        example_args=args,
        dynamic_shapes=({0: batch_dim()},),
        description="MLP 64-256-256-10, ReLU",
        make_inputs=make_inputs,
        task="classification",
    )
