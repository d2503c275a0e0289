"""ShrinkChannelsPass golden graphs: the shrunk program is the narrower model, op for op.

Before -> shrink half the channels -> the same architecture built narrower:
same ops, same arguments and wiring, every parameter and buffer of the
narrower shape (`sparsecc.testing.check_golden` compares all of it).
"""

from __future__ import annotations

import torch
from torch import nn

from sparsecc.passes.structured import ShrinkChannelsPass, plan_structured_pruning
from sparsecc.testing import check_golden


class ConvBnConv(nn.Module):
    def __init__(self, mid: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, mid, 3, padding=1)
        self.bn = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, 4, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


class Mlp(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.up = nn.Linear(16, hidden)
        self.down = nn.Linear(hidden, 8)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


def _shrink_half(program):
    return ShrinkChannelsPass(plan_structured_pruning(program, 0.5, units=("channel",)))


def test_conv_bn_conv_shrinks_to_the_narrower_model():
    check_golden(ConvBnConv(8), _shrink_half, ConvBnConv(4), (torch.randn(2, 3, 6, 6),))


def test_mlp_hidden_layer_shrinks_to_the_narrower_model():
    check_golden(Mlp(32), _shrink_half, Mlp(16), (torch.randn(4, 16),))


def test_nothing_to_prune_does_not_fire():
    # ratio 0: every group keeps all its channels
    check_golden(Mlp(32), lambda p: ShrinkChannelsPass(plan_structured_pruning(p, 0.0)), Mlp(32),
                 (torch.randn(4, 16),))
