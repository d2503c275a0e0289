"""A small ResNet-style CNN: conv-BN-ReLU stem, basic blocks with residual adds."""

from __future__ import annotations

import torch
from torch import nn

from ._common import random_cnn_spec
from .base import ModelSpec

__all__ = ["BasicBlock", "ResNet", "build_resnet"]


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 projection on the skip path when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            # The first block keeps the resolution; a width change downsamples.
            stride = 2 if i > 0 and w != cin else 1
            blocks.append(BasicBlock(cin, w, stride))
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def build_resnet(seed: int = 0) -> ModelSpec:
    """ResNet-style CNN, blocks 16 -> 32 (stride 2, 1x1 projection) -> 32; input [batch, 3, 32, 32]."""
    return random_cnn_spec("resnet", ResNet, seed, "ResNet-style CNN: stem + 3 basic blocks (one downsampling), 32x32 input")
