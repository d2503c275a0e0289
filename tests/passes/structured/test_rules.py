"""The per-op coupling rules as a table: each op has one rule, dispatch follows the table, unknown ops are pinned."""

from __future__ import annotations

import torch
from torch import nn

from sparsecc.passes.structured import find_dependency_groups
from sparsecc.passes.structured.rules import RULES, Rule, find_rule, opname
from sparsecc.testing import export_module


def test_each_op_belongs_to_one_rule():
    seen: dict[str, str] = {}
    for rule in RULES:
        assert isinstance(rule, Rule) and rule.ops, rule
        assert type(rule).__doc__, f"{type(rule).__name__} says what it does"
        for op in rule.ops:
            assert op not in seen, f"{op} is in both {seen[op]} and {type(rule).__name__}"
            seen[op] = type(rule).__name__


def _nodes(module: nn.Module, *args) -> dict[str, torch.fx.Node]:
    program = export_module(module, args)
    return {opname(n.target): n for n in program.graph.nodes if n.op == "call_function"}


class Repeats(nn.Module):
    def forward(self, x, r):
        return x.repeat_interleave(2, dim=1) + x.repeat_interleave(r, dim=1)[:, : x.shape[1] * 2]


def test_dispatch_reads_arguments_where_a_rule_needs_them():
    program = export_module(Repeats(), (torch.randn(2, 3), torch.tensor([2, 2, 2])))
    rep = [n for n in program.graph.nodes if n.op == "call_function" and opname(n.target) == "repeat_interleave"]
    by_int = [n for n in rep if isinstance(n.args[1], int)]
    assert by_int, "the constant repeat stays an int argument"
    assert type(find_rule(by_int[0], "repeat_interleave")).__name__ == "RepeatInterleave"
    assert all(find_rule(n, "repeat_interleave") is None for n in rep if not isinstance(n.args[1], int))


def test_known_ops_find_their_family_and_unknown_ops_none():
    nodes = _nodes(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.LayerNorm(6)), torch.randn(2, 4))
    assert type(find_rule(nodes["linear"], "linear")).__name__ == "Linear"
    assert type(find_rule(nodes["relu"], "relu")).__name__ == "Elementwise"
    assert type(find_rule(nodes["layer_norm"], "layer_norm")).__name__ == "LayerNorm"
    assert find_rule(nodes["linear"], "flip") is None


class Flipped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.flip(torch.relu(self.a(x)), dims=[-1]))


def test_an_op_without_a_rule_pins_its_axes_with_the_reason():
    analysis = find_dependency_groups(export_module(Flipped(), (torch.randn(2, 4),)))
    hidden = [g for g in analysis.groups if any(m.target == "a.weight" and m.axis == 0 for m in g.members)]
    assert len(hidden) == 1 and not hidden[0].prunable
    assert any("no coupling rule" in r and "flip" in r for r in hidden[0].reasons)
