"""Every zoo architecture prunes at 50% and the shrunk program equals the channel-masked one (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.core.program import tensor_leaves
from sparsecc.models import REFERENCE_MODELS
from sparsecc.passes.structured import (
    MaskChannelsPass,
    ShrinkChannelsPass,
    find_dependency_groups,
    plan_structured_pruning,
)

RTOL = 1e-5


def _outputs(program, args, kwargs):
    return tensor_leaves(program.module()(*args, **kwargs))


def check_shrunk_equals_masked(spec, program, plan):
    small = ShrinkChannelsPass(plan)(program).program
    masked = MaskChannelsPass(plan)(program).program
    inputs = [(spec.example_args, spec.example_kwargs)]
    if spec.make_inputs is not None:
        inputs.append(spec.make_inputs(3, 7))  # another batch and sequence length: dynamic dims stay dynamic
    for args, kwargs in inputs:
        for got, want in zip(_outputs(small, args, kwargs), _outputs(masked, args, kwargs), strict=True):
            assert got.shape == want.shape
            scale = want.abs().max().clamp_min(1e-12)
            err = (got - want).abs().max() / scale
            assert err <= RTOL, f"{spec.name}: shrunk differs from masked by {err:.2e} of the output scale"
    return small


# What each reference model must prune at 50%: (kinds of units removed, MACs ratio upper bound).
EXPECT = {
    "mlp": ({"channel"}, 0.35),
    "resnet": ({"channel"}, 0.3),
    "mobilenet": ({"channel"}, 0.35),
    "vit": ({"channel", "head"}, 0.55),
    "bert": ({"channel", "head"}, 0.55),
    "llama": ({"channel", "head"}, 0.65),
    "hf-bert-tiny": ({"channel", "head"}, 0.55),
    "hf-llama-tiny": ({"channel", "head"}, 0.65),
}


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_zoo_model_shrinks_at_half_and_equals_masked(zoo, name):
    spec, program = zoo(name)
    analysis = find_dependency_groups(program)
    plan = plan_structured_pruning(program, 0.5, analysis=analysis)
    kinds, macs_bound = EXPECT[name]
    assert {analysis.groups[g].kind for g in plan.kept} == kinds
    for gid, kept in plan.kept.items():
        assert len(kept) == analysis.groups[gid].size - analysis.groups[gid].size // 2
    small = check_shrunk_equals_masked(spec, program, plan)
    macs = find_prunable_weights(small).total_flops / find_prunable_weights(program).total_flops
    assert macs <= macs_bound, f"{name}: MACs ratio {macs:.3f} after removing half the units"
    params = sum(t.numel() for t in small.state_dict.values())
    assert params < sum(t.numel() for t in program.state_dict.values())
    # the program still exports and saves like any other
    small.validate()


def test_llama_gqa_heads_follow_their_kv_groups(zoo):
    spec, program = zoo("llama")
    analysis = find_dependency_groups(program)
    plan = plan_structured_pruning(program, 0.5, analysis=analysis, include=["layers.0.*"])
    small = check_shrunk_equals_masked(spec, program, plan)
    sd = small.state_dict
    # 4 query heads over 2 kv heads (head dim 16): half the kv groups and half the heads within each
    assert sd["layers.0.self_attn.k_proj.weight"].shape == (16, 64)
    assert sd["layers.0.self_attn.q_proj.weight"].shape == (16, 64)
    assert sd["layers.0.self_attn.o_proj.weight"].shape == (64, 16)
    assert sd["layers.1.self_attn.q_proj.weight"].shape == (64, 64)  # not included
    assert sd["layers.0.mlp.down_proj.weight"].shape == (64, 64)
    ri = [n for n in small.graph.nodes if n.target == torch.ops.aten.repeat_interleave.self_int]
    assert [n.args[1] for n in ri[:2]] == [1, 1]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["mlp", "resnet", "mobilenet", "vit", "llama"]),
    ratio=st.floats(0.0, 0.9),
    criterion=st.sampled_from(["l1", "l2", "random", "bn_scale"]),
    scope=st.sampled_from(["layer", "global"]),
    round_to=st.sampled_from([1, 8]),
)
def test_any_plan_shrinks_exactly(zoo, name, ratio, criterion, scope, round_to):
    spec, program = zoo(name)
    plan = plan_structured_pruning(program, ratio, criterion=criterion, scope=scope, round_to=round_to)
    for gid, kept in plan.kept.items():
        assert 1 <= len(kept) < plan.analysis.groups[gid].size
        assert list(kept) == sorted(set(kept.tolist()))
    check_shrunk_equals_masked(spec, program, plan)
