"""Coupling constructs on small hand-written models: the right groups, and shrunk == masked (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecc.core.pass_infra import PreconditionError
from sparsecc.passes.structured import (
    MaskChannelsPass,
    ShrinkChannelsPass,
    find_dependency_groups,
    plan_structured_pruning,
)
from sparsecc.core.program import tensor_leaves
from sparsecc.testing import export_module

RTOL = 1e-5


def shrink_and_check(program, plan, inputs):
    """Shrink and mask with ``plan``; outputs must agree to 1e-5 of their scale. Returns the shrunk program."""
    small = ShrinkChannelsPass(plan)(program).program
    masked = MaskChannelsPass(plan)(program).program
    for args in inputs:
        got, want = tensor_leaves(small.module()(*args)), tensor_leaves(masked.module()(*args))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            scale = w.abs().max().clamp_min(1e-12)
            assert (g - w).abs().max() <= RTOL * scale, f"shrunk differs from masked: {(g - w).abs().max() / scale:.2e}"
    return small


def group_with(analysis, target, axis=0):
    for g in analysis.groups:
        if any(m.target == target and m.axis == axis for m in g.members):
            return g
    raise AssertionError(f"no group holds {target}[{axis}]")


def members(group):
    return {(m.target, m.axis) for m in group.members}


# -- constructs ---------------------------------------------------------------------


class ConcatBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 12, 1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.head(F.relu(self.bn(y))).mean((2, 3))


def test_concat_branches_partition_the_consumer():
    torch.manual_seed(0)
    m = ConcatBranches().eval()
    m.bn.running_mean.uniform_(-1, 1)
    m.bn.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8)
    prog = export_module(m, (x,))
    an = find_dependency_groups(prog)
    ga, gb = group_with(an, "a.weight"), group_with(an, "b.weight")
    assert ga.id != gb.id and ga.prunable and gb.prunable
    # each branch's group holds its slice of the BN and of the head's input channels
    assert {("a.weight", 0), ("a.bias", 0), ("bn.weight", 0), ("bn.running_mean", 0), ("head.weight", 1)} <= members(ga)
    assert ("head.weight", 1) in members(gb)
    plan = plan_structured_pruning(prog, 0.5, analysis=an)
    small = shrink_and_check(prog, plan, [(x,), (torch.randn(2, 3, 8, 8),)])
    assert small.state_dict["a.weight"].shape[0] == 6 and small.state_dict["b.weight"].shape[0] == 2
    assert small.state_dict["head.weight"].shape[1] == 8 and small.state_dict["bn.weight"].shape[0] == 8


class GroupedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.c2 = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        return self.c2(self.dw(F.relu(self.bn(self.g(F.relu(self.c1(x)))))))


@pytest.mark.parametrize("units", [("head",), ("strided",), ("channel", "head", "strided")])
def test_grouped_and_depthwise_conv(units):
    torch.manual_seed(1)
    m = GroupedConv().eval()
    x = torch.randn(2, 3, 6, 6)
    prog = export_module(m, (x,))
    an = find_dependency_groups(prog)
    # the depthwise conv shares its channels with its input: one group for g's out, bn, dw and c2's in
    g_out = [g for g in an.groups if ("dw.weight", 0) in members(g)]
    assert g_out and all(("c2.weight", 1) in members(g) for g in g_out)
    kinds = {g.kind for g in an.prunable()}
    # channels around a grouped conv are (group, index in group): whole groups or the same index in each
    assert kinds == {"head", "strided"}
    plan = plan_structured_pruning(prog, 0.5, analysis=an, units=units)
    assert plan.kept, f"nothing planned for units {units}"
    small = shrink_and_check(prog, plan, [(x,)])
    groups = [n.args[6] for n in small.graph.nodes if n.target == torch.ops.aten.conv2d.default and len(n.args) > 6]
    g_w, dw_w = small.state_dict["g.weight"], small.state_dict["dw.weight"]
    assert groups[0] * g_w.shape[1] == small.state_dict["c1.weight"].shape[0]  # g's groups follow its input
    assert groups[1] == dw_w.shape[0] == g_w.shape[0]  # still depthwise


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.se1 = nn.Conv2d(16, 4, 1)
        self.se2 = nn.Conv2d(4, 16, 1)
        self.proj = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.silu(self.bn(self.conv(x)))
        s = x.mean((2, 3), keepdim=True)
        x = x * torch.sigmoid(self.se2(F.silu(self.se1(s))))
        return self.fc(F.adaptive_avg_pool2d(self.proj(x), 1).flatten(1))


def test_squeeze_excite_gate_joins_the_channels_it_scales():
    torch.manual_seed(2)
    m = SqueezeExcite().eval()
    x = torch.randn(2, 3, 7, 7)
    prog = export_module(m, (x,))
    an = find_dependency_groups(prog)
    g = group_with(an, "conv.weight")
    assert {("conv.weight", 0), ("bn.weight", 0), ("se1.weight", 1), ("se2.weight", 0), ("se2.bias", 0), ("proj.weight", 1)} <= members(g)
    se = group_with(an, "se1.weight")
    assert se.prunable and ("se2.weight", 1) in members(se)
    # global pooling into the classifier: proj's channels are the classifier's inputs
    assert ("fc.weight", 1) in members(group_with(an, "proj.weight"))
    plan = plan_structured_pruning(prog, 0.5, analysis=an)
    small = shrink_and_check(prog, plan, [(x,), (torch.randn(2, 3, 7, 7),)])
    assert small.state_dict["se2.weight"].shape[:2] == (8, 2)


class GQAttention(nn.Module):
    """Grouped-query attention through SDPA (enable_gqa) or repeat_interleave."""

    def __init__(self, hidden=32, heads=4, kv_heads=2, sdpa=True):
        super().__init__()
        self.h, self.kv, self.d, self.sdpa = heads, kv_heads, hidden // heads, sdpa
        self.q = nn.Linear(hidden, heads * self.d)
        self.k = nn.Linear(hidden, kv_heads * self.d)
        self.v = nn.Linear(hidden, kv_heads * self.d)
        self.o = nn.Linear(heads * self.d, hidden)
        self.up = nn.Linear(hidden, 48)
        self.down = nn.Linear(48, hidden)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv, self.d).transpose(1, 2)
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            k = k.repeat_interleave(self.h // self.kv, dim=1)
            v = v.repeat_interleave(self.h // self.kv, dim=1)
            a = torch.softmax(q @ k.transpose(-1, -2) / self.d**0.5, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        return x + self.down(F.gelu(self.up(x)))


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa-enable-gqa", "repeat-interleave"])
def test_gqa_groups_and_query_heads_within_a_group(sdpa):
    torch.manual_seed(3)
    m = GQAttention(sdpa=sdpa).eval()
    x = torch.randn(2, 5, 32)
    prog = export_module(m, (x,))
    an = find_dependency_groups(prog)
    heads = [g for g in an.prunable() if g.kind == "head"]
    kv_group = next(g for g in heads if ("k.weight", 0) in members(g))
    assert kv_group.size == 2 and {("q.weight", 0), ("v.weight", 0), ("o.weight", 1)} <= members(kv_group)
    within = next(g for g in heads if g is not kv_group)
    assert within.size == 2 and members(within) >= {("q.weight", 0), ("o.weight", 1)}
    assert ("k.weight", 0) not in members(within)
    # the residual stream reaches the output: never pruned
    assert not group_with(an, "o.weight", 0).prunable
    for units_of, expect in ((kv_group, (2, 1)), (within, (2, 2))):
        plan = plan_structured_pruning(prog, 0.5, analysis=an, include=[], units=("head",))
        plan.kept = {units_of.id: plan.kept[units_of.id]}
        small = shrink_and_check(prog, plan, [(x,), (torch.randn(2, 5, 32),)])
        q_heads = small.state_dict["q.weight"].shape[0] // 8
        kv_heads = small.state_dict["k.weight"].shape[0] // 8
        assert (q_heads, kv_heads) == (expect[0] if units_of is within else 2, expect[1] if units_of is kv_group else 2)
    plan = plan_structured_pruning(prog, 0.5, analysis=an)
    small = shrink_and_check(prog, plan, [(x,)])
    assert small.state_dict["up.weight"].shape[0] == 24


class TiedEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 24)
        self.fc = nn.Linear(24, 40)
        self.proj = nn.Linear(40, 24)
        self.lm = nn.Linear(24, 50, bias=False)
        self.lm.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.proj(F.relu(self.fc(h)))
        return self.lm(h)


def test_tied_embedding_is_sliced_once_for_both_uses():
    torch.manual_seed(4)
    m = TiedEmbeddings().eval()
    ids = torch.randint(0, 50, (2, 6))
    prog = export_module(m, (ids,))
    an = find_dependency_groups(prog)
    # torch.export lifts the tied table once; both the lookup and the projection use it
    table = next(t for t in ("lm.weight", "emb.weight") if any(t == m.target for g in an.groups for m in g.members))
    hidden = group_with(an, table, 1)
    assert hidden.prunable and {("fc.weight", 1), ("proj.weight", 0)} <= members(hidden)
    vocab = group_with(an, table, 0)
    assert not vocab.prunable
    assert any("looked up" in r for r in vocab.reasons) and any("model output" in r for r in vocab.reasons)
    plan = plan_structured_pruning(prog, 0.5, analysis=an)
    assert hidden.id in plan.kept
    small = shrink_and_check(prog, plan, [(ids,), (torch.randint(0, 50, (2, 6)),)])
    sd = small.state_dict
    assert sd["emb.weight"].shape == sd["lm.weight"].shape == (50, 12)
    assert sd["emb.weight"] is sd["lm.weight"]  # still one tied tensor


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.c2 = nn.Conv2d(16, 8, 1)
        self.ln = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        x = self.c2(F.relu(self.gn(self.c1(x))))
        x = self.ln(x.mean((2, 3)))
        return self.fc2(F.relu(self.fc1(x)))


def test_norms_groupnorm_prunes_whole_groups_layernorm_pins():
    torch.manual_seed(5)
    m = Norms().eval()
    m.gn.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5)
    prog = export_module(m, (x,))
    an = find_dependency_groups(prog)
    ln = group_with(an, "c2.weight")
    assert not ln.prunable and any("layer_norm" in r for r in ln.reasons)
    gn_groups = next(g for g in an.groups if ("gn.weight", 0) in members(g) and g.kind == "head")
    assert gn_groups.prunable and gn_groups.size == 4
    within = next(g for g in an.groups if ("gn.weight", 0) in members(g) and g is not gn_groups)
    assert not within.prunable and any("group_norm" in r for r in within.reasons)
    plan = plan_structured_pruning(prog, 0.5, analysis=an, criterion="bn_scale")
    small = shrink_and_check(prog, plan, [(x,)])
    gn = next(n for n in small.graph.nodes if n.target == torch.ops.aten.group_norm.default)
    assert gn.args[1] == 2 and small.state_dict["gn.weight"].shape == (8,)
    assert small.state_dict["fc1.weight"].shape == (16, 8)


class RMSNormBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(16))
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 16)

    def forward(self, x):
        h = self.fc1(x)
        h = self.w * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.fc2(h)


def test_rmsnorm_statistics_pin_the_hidden_axis():
    m = RMSNormBlock().eval()
    prog = export_module(m, (torch.randn(2, 16),))
    g = group_with(find_dependency_groups(prog), "fc1.weight")
    assert not g.prunable and any("reduced by mean" in r for r in g.reasons)


class ChunkSplit(nn.Module):
    """A fused gate/up projection split by chunk, and a flatten/permute round trip."""

    def __init__(self):
        super().__init__()
        self.gate_up = nn.Linear(12, 2 * 20)
        self.down = nn.Linear(20, 12)
        self.conv = nn.Conv2d(12, 6, 1)
        self.out = nn.Linear(6 * 4, 3)

    def forward(self, x):
        g, u = self.gate_up(x).chunk(2, dim=-1)
        h = self.down(F.silu(g) * u)  # [B, 4, 12]
        h = self.conv(h.permute(0, 2, 1).unsqueeze(-1))  # [B, 12, 4, 1] -> [B, 6, 4, 1]
        return self.out(h.flatten(1))


def test_chunk_and_flatten_into_a_classifier():
    torch.manual_seed(6)
    m = ChunkSplit().eval()
    x = torch.randn(2, 4, 12)
    prog = export_module(m, (x,))
    an = find_dependency_groups(prog)
    ffn = next(g for g in an.prunable() if ("down.weight", 1) in members(g))
    assert ("gate_up.weight", 0) in members(ffn)
    conv = group_with(an, "conv.weight")
    assert conv.prunable and ("out.weight", 1) in members(conv)  # flattened channels x positions
    plan = plan_structured_pruning(prog, 0.5, analysis=an)
    small = shrink_and_check(prog, plan, [(x,)])
    assert small.state_dict["gate_up.weight"].shape == (20, 12)
    assert small.state_dict["out.weight"].shape == (3, 12)
    assert not group_with(an, "out.weight", 1).prunable or group_with(an, "out.weight", 1).size == 6
    assert any(n.target == torch.ops.aten.split_with_sizes.default or n.target == torch.ops.aten.chunk.default for n in small.graph.nodes)


# -- what must stay whole -----------------------------------------------------------


class Flipped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.flip(F.relu(self.fc1(x)), dims=[-1]))


def test_unknown_op_leaves_the_group_whole_and_says_why():
    prog = export_module(Flipped().eval(), (torch.randn(2, 8),))
    an = find_dependency_groups(prog)
    g = group_with(an, "fc1.weight")
    assert not g.prunable and any("no coupling rule" in r and "flip" in r for r in g.reasons)
    plan = plan_structured_pruning(prog, 0.5, analysis=an)
    assert plan.kept == {}
    assert ShrinkChannelsPass(plan)(prog).modified is False


class ActivationContraction(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(8, 16)

    def forward(self, x):
        return (self.a(x) * self.b(x)).sum(-1, keepdim=True) + (self.a(x) @ self.b(x).T).mean()


def test_reductions_and_activation_products_pin():
    prog = export_module(ActivationContraction().eval(), (torch.randn(3, 8),))
    g = group_with(find_dependency_groups(prog), "a.weight")
    assert not g.prunable
    assert any("reduced by sum" in r for r in g.reasons) or any("two activations" in r for r in g.reasons)


def test_plan_for_another_program_is_refused():
    torch.manual_seed(0)
    p1 = export_module(SqueezeExcite().eval(), (torch.randn(1, 3, 5, 5),))
    p2 = export_module(ConcatBranches().eval(), (torch.randn(1, 3, 5, 5),))
    plan = plan_structured_pruning(p1, 0.5)
    with pytest.raises(PreconditionError, match="ShrinkChannelsPass.*another program"):
        ShrinkChannelsPass(plan)(p2)


def test_bad_ratio_and_units_are_named():
    prog = export_module(Flipped().eval(), (torch.randn(2, 8),))
    with pytest.raises(ValueError, match="ratio must be in"):
        plan_structured_pruning(prog, 1.5)
    with pytest.raises(ValueError, match="unknown unit kind 'neuron'"):
        plan_structured_pruning(prog, 0.5, units=("neuron",))
    with pytest.raises(ValueError, match="unknown structured criterion"):
        plan_structured_pruning(export_module(SqueezeExcite().eval(), (torch.randn(1, 3, 5, 5),)), 0.5, criterion="wanda")


def test_rounding_protect_and_global_scope():
    torch.manual_seed(7)
    m = SqueezeExcite().eval()
    x = torch.randn(1, 3, 5, 5)
    prog = export_module(m, (x,))
    an = find_dependency_groups(prog)
    conv = group_with(an, "conv.weight")
    plan = plan_structured_pruning(prog, 0.75, analysis=an, round_to=8)
    assert len(plan.kept[conv.id]) == 8  # 4 kept, rounded up to 8
    plan = plan_structured_pruning(prog, 0.5, analysis=an, protect=["se1"])
    assert group_with(an, "se1.weight").id not in plan.kept and "protected" in plan.skipped[group_with(an, "se1.weight").id]
    plan = plan_structured_pruning(prog, 0.5, analysis=an, scope="global")
    total = sum(g.size for g in an.prunable())
    assert plan.removed_units == total // 2
    shrink_and_check(prog, plan, [(x,)])


def test_importance_ranks_units_by_their_coupled_slices():
    """The channel whose producer and consumer weights are largest survives; the zero one goes."""
    torch.manual_seed(8)
    m = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0] * 6, [0.0] * 6, [0.1] * 6, [2.0] * 6]))
        m[2].weight.zero_()
        m[2].weight[:, 1] = 10.0  # channel 1 is small as an output but large as an input
    prog = export_module(m, (torch.randn(2, 6),))
    for crit, want in (("l1", [1, 3]), ("l2", [1, 3])):
        plan = plan_structured_pruning(prog, 0.5, criterion=crit)
        assert list(plan.kept[next(iter(plan.kept))]) == want


class _InvertedResidual(nn.Module):
    """stem -> expand -> project (+ stem): a residual group and an expansion group."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.project = nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.stem(x)
        return self.head(h + self.project(torch.relu(self.expand(h))))


def test_include_out_prefix_selects_the_groups_slicing_a_weights_outputs():
    prog = export_module(_InvertedResidual().eval(), (torch.randn(1, 3, 4, 4),))
    an = find_dependency_groups(prog)
    residual, hidden = group_with(an, "stem.weight"), group_with(an, "expand.weight")
    # Both groups touch expand.weight (the residual one on its input axis) ...
    plain = plan_structured_pruning(prog, 0.5, analysis=an, include=["expand"])
    assert set(plain.kept) == {residual.id, hidden.id}
    # ... out: keeps only the group that slices its output channels.
    out = plan_structured_pruning(prog, 0.5, analysis=an, include=["out:expand"])
    assert set(out.kept) == {hidden.id}
    assert out.skipped[residual.id] == "not matched by include"
    protected = plan_structured_pruning(prog, 0.5, analysis=an, protect=["in:expand"])
    assert set(protected.kept) == {hidden.id}
    shrink_and_check(prog, out, [(torch.randn(1, 3, 4, 4),)])
