"""A small MobileNetV2-style CNN built from inverted residual blocks."""

from __future__ import annotations

import torch
from torch import nn

from ._common import random_cnn_spec
from .base import ModelSpec

__all__ = ["InvertedResidual", "MobileNetV2", "build_mobilenet"]


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_act(cin, hidden, 1))
        layers.append(_conv_bn_act(hidden, hidden, 3, stride=stride, groups=hidden))
        layers.append(_conv_bn_act(hidden, cout, 1, act=False))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    # (expansion t, output channels c, stride s) per block, as in the MobileNetV2 paper.
    CONFIG = ((1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2), (4, 32, 1))

    def __init__(self, stem: int = 16, last: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn_act(3, stem, 3, stride=2)]
        cin = stem
        for t, c, s in self.CONFIG:
            blocks.append(InvertedResidual(cin, c, s, t))
            cin = c
        blocks.append(_conv_bn_act(cin, last, 1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build_mobilenet(seed: int = 0) -> ModelSpec:
    """MobileNetV2-style CNN (5 inverted residual blocks); input [batch, 3, 32, 32]."""
    return random_cnn_spec("mobilenet", MobileNetV2, seed, "MobileNetV2-style CNN: inverted residuals with depthwise 3x3, ReLU6")
